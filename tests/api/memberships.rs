//! Memberships (issue 13, seed 002) through the real server: an organization's own customers hold
//! memberships with services per cycle; bookings are priced with the membership's benefits and the
//! platform's fees, hold a service from creation and use it up on completion. The seed's three
//! scenarios, its edge cases, concurrency, cycles driven by the server's clock (never by sleeping),
//! the pricing table to the cent, what a CUSTOMER token may see, and live updates.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::future::join_all;
use serde_json::{Value, json};
use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::{Engine, TestApp, code, tollgate_cli};
use crate::ws::{Event, Ws, bearer};

// ---- documents ----

macro_rules! quote_fields {
    () => {
        "coverage membership { id } servicePrice membershipDiscount subtotal platformFee \
         guestSurcharge total providerPayout remainingAfter currency"
    };
}
macro_rules! booking_fields {
    () => {
        concat!(
            "id reference status holdsService customer { id } membership { id } createdAt updatedAt quote { ",
            quote_fields!(),
            " }"
        )
    };
}
macro_rules! usage_fields {
    () => {
        "cycleStart cycleEnd includedServices bonusServices totalAllowance used held remaining \
         overageCount overageCharges currency"
    };
}
macro_rules! membership_fields {
    () => {
        "id status startedAt currentCycleStart currentCycleEnd nextResetAt pausedAt cancelledAt \
         stripeSubscriptionId plan { code } customer { id }"
    };
}

const QUOTE: &str = concat!(
    "query($i: QuoteBookingInput!) { quoteBooking(input: $i) { ",
    quote_fields!(),
    " } }"
);
const CREATE_BOOKING: &str = concat!(
    "mutation($i: CreateBookingInput!) { createBooking(input: $i) { ",
    booking_fields!(),
    " } }"
);
const UPDATE_STATUS: &str = concat!(
    "mutation($i: UpdateBookingStatusInput!) { updateBookingStatus(input: $i) { ",
    booking_fields!(),
    " } }"
);
const LINK: &str = concat!(
    "mutation($i: LinkBookingInput!) { linkBooking(input: $i) { ",
    booking_fields!(),
    " } }"
);
const UNLINK: &str = concat!(
    "mutation($i: BookingRefInput!) { unlinkBooking(input: $i) { ",
    booking_fields!(),
    " } }"
);
const BOOKING: &str = concat!(
    "query($o: ID, $r: String!) { booking(organizationId: $o, reference: $r) { ",
    booking_fields!(),
    " } }"
);
const MEMBERSHIP: &str = concat!(
    "query($m: ID!) { membership(id: $m) { ",
    membership_fields!(),
    " usage { ",
    usage_fields!(),
    " } } }"
);
const USAGE_AT: &str = concat!(
    "query($m: ID!, $at: DateTime) { membership(id: $m) { usage(at: $at) { ",
    usage_fields!(),
    " } } }"
);
const HISTORY: &str = concat!(
    "query($m: ID!, $from: DateTime, $to: DateTime) { membership(id: $m) { usageHistory(from: $from, to: $to) { ",
    usage_fields!(),
    " } } }"
);
const EVENTS: &str = "query($m: ID!, $first: Int, $after: String, $from: DateTime, $to: DateTime) { \
    membership(id: $m) { usageEvents(first: $first, after: $after, from: $from, to: $to) { \
    nodes { id kind quantity overage charge booking { reference } reason actor occurredAt recordedAt } \
    pageInfo { hasNextPage endCursor } } } }";
const SUBSCRIBE: &str = concat!(
    "mutation($i: SubscribeCustomerInput!) { subscribeCustomer(input: $i) { ",
    membership_fields!(),
    " } }"
);
const PAUSE: &str = concat!(
    "mutation($i: MembershipActionInput!) { pauseMembership(input: $i) { ",
    membership_fields!(),
    " } }"
);
const RESUME: &str = concat!(
    "mutation($i: MembershipActionInput!) { resumeMembership(input: $i) { ",
    membership_fields!(),
    " } }"
);
const CANCEL: &str = concat!(
    "mutation($i: MembershipActionInput!) { cancelMembership(input: $i) { ",
    membership_fields!(),
    " } }"
);
const GRANT: &str = concat!(
    "mutation($i: MembershipCorrectionInput!) { grantMembershipCredit(input: $i) { ",
    usage_fields!(),
    " } }"
);
const ADJUST: &str = concat!(
    "mutation($i: MembershipCorrectionInput!) { adjustMembershipUsage(input: $i) { ",
    usage_fields!(),
    " } }"
);
const RESET: &str = concat!(
    "mutation($i: MembershipResetInput!) { resetMembershipUsage(input: $i) { ",
    usage_fields!(),
    " } }"
);
const PAY: &str = "mutation($i: RecordPaymentInput!) { recordPayment(input: $i) { amount applicationFee netAmount reference } }";
const UPSERT_PLAN: &str = "mutation($i: UpsertMembershipPlanInput!) { upsertMembershipPlan(input: $i) { \
    id code name price currency interval servicesPerCycle discountPct allowOverage overageRate active } }";

// ---- helpers ----

/// An organization (on a platform plan with the given application fee), with its ADMIN and SERVICE tokens.
struct Tenant {
    id: String,
    admin: String,
    service: String,
}

async fn tenant(app: &TestApp, slug: &str, fee_pct: &str) -> Tenant {
    let (plan, rank) = match fee_pct {
        "10" => ("fee-10", 71),
        "7.5" => ("fee-7-5", 72),
        other => panic!("no plan for a fee of {other}%"),
    };
    let body = app
        .gql(
            &app.platform_token(),
            "mutation($i: UpsertPlanInput!) { upsertPlan(input: $i) { code } }",
            json!({ "i": { "code": plan, "name": plan, "rank": rank, "priceMonthly": "10",
                "applicationFeePct": fee_pct,
                "limits": [{ "metric": "bookings", "included": "100", "enforcement": "SOFT" }] } }),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let id = app.create_org(slug, plan).await;
    Tenant {
        admin: app.tenant_token(&id, Role::Admin),
        service: app.tenant_token(&id, Role::Service),
        id,
    }
}

/// Upserts membership plan `code` (49.00 usd a MONTH, 15% member discount, no overage unless
/// `extra` says otherwise) as the tenant's ADMIN.
async fn membership_plan(
    app: &TestApp,
    t: &Tenant,
    code: &str,
    services: i64,
    extra: Value,
) -> Value {
    let mut input = json!({ "code": code, "name": format!("Plan {code}"), "price": "49.00",
        "currency": "usd", "interval": "MONTH", "servicesPerCycle": services,
        "discountPct": "15", "allowOverage": false });
    for (k, v) in extra.as_object().expect("an object") {
        input[k] = v.clone();
    }
    app.ok(&t.admin, UPSERT_PLAN, json!({ "i": input })).await["upsertMembershipPlan"].clone()
}

/// Adds a customer whose externalId (the sub of its CUSTOMER tokens) is `external_id`; its id.
async fn customer(app: &TestApp, t: &Tenant, external_id: &str) -> String {
    let data = app
        .ok(
            &t.admin,
            "mutation($i: CreateCustomerInput!) { createCustomer(input: $i) { id externalId name } }",
            json!({ "i": { "externalId": external_id, "name": format!("Customer {external_id}"),
                "email": format!("{external_id}@example.test") } }),
        )
        .await;
    assert_eq!(data["createCustomer"]["externalId"], external_id);
    data["createCustomer"]["id"].as_str().unwrap().to_owned()
}

/// A CUSTOMER token of `org` for the customer whose externalId is `external_id`.
fn customer_token(app: &TestApp, org: &str, external_id: &str) -> String {
    app.token(external_id, Some(org), Some(Role::Customer))
}

/// Subscribes `customer` to `plan` as the tenant's ADMIN (`extra`: startsAt, stripeSubscriptionId).
async fn subscribe(app: &TestApp, t: &Tenant, customer: &str, plan: &str, extra: Value) -> Value {
    let mut input = json!({ "customerId": customer, "planCode": plan });
    for (k, v) in extra.as_object().expect("an object") {
        input[k] = v.clone();
    }
    app.ok(&t.admin, SUBSCRIBE, json!({ "i": input })).await["subscribeCustomer"].clone()
}

fn booking_input(customer: &str, reference: &str, price: &str) -> Value {
    json!({ "i": { "reference": reference, "customerId": customer, "servicePrice": price, "currency": "usd" } })
}

/// createBooking for `customer` that must succeed; the booking.
async fn book(app: &TestApp, token: &str, customer: &str, reference: &str, price: &str) -> Value {
    app.ok(
        token,
        CREATE_BOOKING,
        booking_input(customer, reference, price),
    )
    .await["createBooking"]
        .clone()
}

/// updateBookingStatus: the whole response.
async fn set_status(app: &TestApp, token: &str, reference: &str, status: &str) -> Value {
    app.gql(
        token,
        UPDATE_STATUS,
        json!({ "i": { "reference": reference, "status": status } }),
    )
    .await
}

/// updateBookingStatus that must succeed; the booking.
async fn move_to(app: &TestApp, token: &str, reference: &str, status: &str) -> Value {
    let body = set_status(app, token, reference, status).await;
    assert!(
        body.get("errors").is_none(),
        "{reference} -> {status}: {body}"
    );
    let b = body["data"]["updateBookingStatus"].clone();
    assert_eq!(b["status"], status, "{b}");
    b
}

/// The current cycle's usage of membership `m`.
async fn usage(app: &TestApp, token: &str, m: &str) -> Value {
    app.ok(token, MEMBERSHIP, json!({ "m": m })).await["membership"]["usage"].clone()
}

async fn membership(app: &TestApp, token: &str, m: &str) -> Value {
    app.ok(token, MEMBERSHIP, json!({ "m": m })).await["membership"].clone()
}

/// Every usage event of `m`, newest first.
async fn events(app: &TestApp, token: &str, m: &str) -> Vec<Value> {
    events_between(app, token, m, None, None).await
}

async fn events_between(
    app: &TestApp,
    token: &str,
    m: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Vec<Value> {
    let data = app
        .ok(
            token,
            EVENTS,
            json!({ "m": m, "first": 100, "from": from, "to": to }),
        )
        .await;
    data["membership"]["usageEvents"]["nodes"]
        .as_array()
        .unwrap()
        .clone()
}

/// A quantity as written by the server, in its shortest form ("3.00" and "3" are both "3").
fn qty(v: &Value) -> String {
    let s = v
        .as_str()
        .unwrap_or_else(|| panic!("a Decimal string, got {v}"));
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s.to_owned()
    }
}

/// Asserts a usage's used, held and remaining services.
fn assert_counts(u: &Value, used: &str, held: &str, remaining: &str, ctx: &str) {
    assert_eq!(
        (qty(&u["used"]), qty(&u["held"]), qty(&u["remaining"])),
        (used.to_owned(), held.to_owned(), remaining.to_owned()),
        "{ctx}: used, held, remaining of {u}"
    );
}

fn at(v: &Value) -> DateTime<Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("a DateTime, got {v}"));
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&Utc)
}

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// `v` is within two seconds of `expected` (the test clock runs on from where it is set).
fn assert_near(v: &Value, expected: &str, ctx: &str) {
    let d = (at(v) - utc(expected)).num_milliseconds().abs();
    assert!(d < 2000, "{ctx}: {v} is not {expected}");
}

/// Every amount of a quote: [membershipDiscount, subtotal, platformFee, guestSurcharge, total, providerPayout].
fn amounts(q: &Value) -> [String; 6] {
    [
        "membershipDiscount",
        "subtotal",
        "platformFee",
        "guestSurcharge",
        "total",
        "providerPayout",
    ]
    .map(|k| q[k].as_str().unwrap_or("<missing>").to_owned())
}

/// Each event's kind and booking reference ("" without one), sorted.
fn kinds_and_refs(list: &[Value]) -> Vec<(&str, &str)> {
    let mut v: Vec<(&str, &str)> = list
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or("<none>"),
                e["booking"]["reference"].as_str().unwrap_or(""),
            )
        })
        .collect();
    v.sort();
    v
}

fn set_clock(app: &TestApp, at: &str) {
    app.state.engine.clock.set(utc(at));
}

async fn recompute_is_clean(app: &TestApp) {
    let (ok, out) = tollgate_cli(&app.database_url, &["recompute", "--check"]).await;
    assert!(ok, "recompute --check found differences: {out}");
}

// ---- 1. the seed's scenario 1 ----

/// Seed scenario 1: a member on 5 services a month makes 3 bookings; each is free (INCLUDED) and
/// holds a service from its creation, uses it up when COMPLETED: 3 used, 2 remain, nothing held,
/// and the ledger shows one USAGE event per booking.
async fn normal_usage_flow(app: TestApp) {
    let t = tenant(&app, "venue", "10").await;
    let plan = membership_plan(&app, &t, "monthly-5", 5, json!({})).await;
    assert_eq!(
        (
            plan["price"].as_str(),
            plan["currency"].as_str(),
            plan["interval"].as_str(),
            plan["servicesPerCycle"].as_i64(),
            plan["allowOverage"].as_bool(),
            plan["active"].as_bool(),
        ),
        (
            Some("49.00"),
            Some("usd"),
            Some("MONTH"),
            Some(5),
            Some(false),
            Some(true)
        ),
        "{plan}"
    );
    assert!(plan["overageRate"].is_null(), "{plan}");
    let data = app
        .ok(
            &t.admin,
            "{ organization { membershipPlans { code } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        data["organization"]["membershipPlans"],
        json!([{ "code": "monthly-5" }])
    );

    let alice = customer(&app, &t, "user_alice").await;
    assert_eq!(
        customer(&app, &t, "user_alice").await,
        alice,
        "createCustomer is idempotent by externalId"
    );
    let before = Utc::now();
    let m = subscribe(&app, &t, &alice, "monthly-5", json!({})).await;
    assert_eq!(m["status"], "ACTIVE", "{m}");
    assert_eq!(m["plan"]["code"], "monthly-5");
    assert_eq!(m["customer"]["id"], alice.as_str());
    assert_eq!(m["currentCycleStart"], m["startedAt"], "{m}");
    assert_eq!(m["nextResetAt"], m["currentCycleEnd"], "{m}");
    assert!(
        (at(&m["startedAt"]) - before).num_seconds().abs() < 60,
        "startedAt defaults to now: {m}"
    );
    let mid = m["id"].as_str().unwrap().to_owned();

    // The customer sees itself and its membership.
    let me = customer_token(&app, &t.id, "user_alice");
    let data = app
        .ok(
            &me,
            "{ viewer { role customer { id externalId activeMembership { id status } memberships { id } } } }",
            json!({}),
        )
        .await;
    let v = &data["viewer"];
    assert_eq!(v["role"], "CUSTOMER");
    assert_eq!(v["customer"]["id"], alice.as_str());
    assert_eq!(v["customer"]["activeMembership"]["id"], mid.as_str());
    assert_eq!(v["customer"]["memberships"], json!([{ "id": mid }]));

    // Three bookings: free, each holding a service from its creation.
    for (i, reference) in ["booking:1", "booking:2", "booking:3"].iter().enumerate() {
        let b = book(&app, &t.service, &alice, reference, "80.00").await;
        let q = &b["quote"];
        assert_eq!(
            (
                b["status"].as_str(),
                q["coverage"].as_str(),
                b["holdsService"].as_bool()
            ),
            (Some("INITIATED"), Some("INCLUDED"), Some(true)),
            "{b}"
        );
        assert_eq!(b["membership"]["id"], mid.as_str());
        assert_eq!(q["membership"]["id"], mid.as_str());
        assert_eq!(b["customer"]["id"], alice.as_str());
        assert_eq!(q["servicePrice"], "80.00");
        assert_eq!(
            amounts(q),
            ["80.00", "0.00", "0.00", "0.00", "0.00", "0.00"],
            "{q}"
        );
        assert_eq!(qty(&q["remainingAfter"]), (4 - i).to_string(), "{q}");
        assert_eq!(q["currency"], "usd");
    }
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "0",
        "3",
        "2",
        "three held",
    );

    // booking:1 walks every state; the other two skip ahead to COMPLETED.
    for status in [
        "PENDING_PROVIDER",
        "ACCEPTED",
        "PAYMENT_PENDING",
        "PAYMENT_SUCCEEDED",
        "COMPLETED",
    ] {
        let b = move_to(&app, &t.service, "booking:1", status).await;
        assert_eq!(b["holdsService"], status != "COMPLETED", "{status}: {b}");
    }
    move_to(&app, &t.service, "booking:2", "COMPLETED").await;
    move_to(&app, &t.service, "booking:3", "COMPLETED").await;

    let u = usage(&app, &t.admin, &mid).await;
    assert_counts(&u, "3", "0", "2", "three completed");
    assert_eq!(u["includedServices"], 5);
    assert_eq!(
        (
            qty(&u["bonusServices"]),
            qty(&u["totalAllowance"]),
            qty(&u["overageCount"])
        ),
        ("0".to_owned(), "5".to_owned(), "0".to_owned()),
        "{u}"
    );
    assert_eq!(u["overageCharges"], "0.00");
    assert_eq!(u["currency"], "usd");

    // The ledger: one USAGE event per completed booking.
    let ev = events(&app, &t.admin, &mid).await;
    assert_eq!(ev.len(), 3, "{ev:?}");
    for e in &ev {
        assert_eq!(
            (
                e["kind"].as_str(),
                qty(&e["quantity"]),
                e["overage"].as_bool(),
                e["charge"].as_str()
            ),
            (Some("USAGE"), "1".to_owned(), Some(false), Some("0.00")),
            "{e}"
        );
    }
    let refs: BTreeSet<&str> = ev
        .iter()
        .map(|e| e["booking"]["reference"].as_str().unwrap_or("<none>"))
        .collect();
    assert_eq!(
        refs,
        BTreeSet::from(["booking:1", "booking:2", "booking:3"])
    );

    // The membership's bookings, by status.
    let data = app
        .ok(
            &t.admin,
            "query($m: ID!) { membership(id: $m) { done: bookings(status: COMPLETED) { nodes { reference holdsService } } open: bookings(status: INITIATED) { nodes { reference } } all: bookings { nodes { reference } } } }",
            json!({ "m": mid }),
        )
        .await;
    let ms = &data["membership"];
    assert_eq!(ms["done"]["nodes"].as_array().unwrap().len(), 3, "{ms}");
    assert_eq!(ms["open"]["nodes"], json!([]));
    assert_eq!(ms["all"]["nodes"].as_array().unwrap().len(), 3);

    // The customer reads the same through its own token.
    let data = app
        .ok(
            &me,
            "{ viewer { customer { activeMembership { usage { used remaining } } } } }",
            json!({}),
        )
        .await;
    let u = &data["viewer"]["customer"]["activeMembership"]["usage"];
    assert_eq!(
        (qty(&u["used"]), qty(&u["remaining"])),
        ("3".to_owned(), "2".to_owned())
    );
    let data = app.ok(&me, BOOKING, json!({ "r": "booking:2" })).await;
    assert_eq!(data["booking"]["status"], "COMPLETED");
    assert_eq!(data["booking"]["quote"]["total"], "0.00");
    recompute_is_clean(&app).await;
}
both_engines!(seed_normal_usage, super::normal_usage_flow);

/// reverseUsage undoes the organization's own recordings that carry a reference, never a
/// membership's events with the same booking reference (those count against the membership).
async fn reversing_a_reference_leaves_memberships_alone(app: TestApp) {
    let t = tenant(&app, "reverse-member", "10").await;
    membership_plan(&app, &t, "basic", 5, json!({})).await;
    let alice = customer(&app, &t, "alice-reverse").await;
    let mid = subscribe(&app, &t, &alice, "basic", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    book(&app, &t.service, &alice, "shared:1", "80.00").await;
    move_to(&app, &t.service, "shared:1", "COMPLETED").await;
    // The organization's backend records the same booking on its own plan.
    app.ok(
        &t.service,
        "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"1\", reference: \"shared:1\"}) { accepted } }",
        json!({}),
    )
    .await;
    let d = app
        .ok(
            &t.service,
            "mutation { reverseUsage(input: {reference: \"shared:1\", reason: \"cancelled\"}) { \
             reversedEvents { metric { code } quantity } } }",
            json!({}),
        )
        .await;
    let reversed = d["reverseUsage"]["reversedEvents"].as_array().unwrap();
    assert_eq!(reversed.len(), 1, "{d}");
    assert_eq!(reversed[0]["metric"]["code"], "bookings", "{d}");
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "1",
        "0",
        "4",
        "after reversing the organization's recording",
    );
    assert_eq!(events(&app, &t.admin, &mid).await.len(), 1);
}
both_engines!(
    reverse_leaves_memberships,
    super::reversing_a_reference_leaves_memberships_alone
);

// ---- 2. the seed's scenario 2: overage, charged, counted and billed once ----

/// Seed scenario 2: a member past its allowance with overage at 25.00: the third booking is OVERAGE
/// priced 25.00; once COMPLETED it counts (overageCount 1, overageCharges 25.00); repeating
/// COMPLETED (also concurrently) changes nothing; with a Stripe subscription on the membership the
/// overage becomes one invoice item on that subscription's customer, on the organization's
/// connected account, sent once by the outbox; a member without one is counted and not billed.
async fn overage_is_charged_counted_and_billed_once(engine: Engine) {
    let (url, fake) = crate::stripe::fake_stripe().await;
    let Some(app) = crate::helpers::spawn_app(
        engine,
        &[
            "--stripe-secret-key",
            "sk_test_123",
            "--stripe-api-base",
            &url,
            "--stripe-outbox-interval",
            "1s",
        ],
    )
    .await
    else {
        return;
    };
    let t = tenant(&app, "salon", "10").await;
    // The organization's connected account, through which its customers pay it.
    let data = app
        .ok(
            &t.admin,
            "mutation { createConnectAccount(input: {email: \"owner@salon.test\", country: \"us\"}) { stripeAccountId } }",
            json!({}),
        )
        .await;
    assert_eq!(data["createConnectAccount"]["stripeAccountId"], "acct_1");
    let data = app
        .ok(
            &t.admin,
            "mutation { refreshConnectAccount { status } }",
            json!({}),
        )
        .await;
    assert_eq!(data["refreshConnectAccount"]["status"], "ACTIVE");

    let plan = membership_plan(
        &app,
        &t,
        "plus",
        2,
        json!({ "allowOverage": true, "overageRate": "25.00", "discountPct": "10" }),
    )
    .await;
    assert_eq!(plan["overageRate"], "25.00", "{plan}");
    assert_eq!(plan["allowOverage"], true);
    let frank = customer(&app, &t, "member_1").await;
    let m = subscribe(
        &app,
        &t,
        &frank,
        "plus",
        json!({ "stripeSubscriptionId": "sub_member_1" }),
    )
    .await;
    assert_eq!(m["stripeSubscriptionId"], "sub_member_1");
    let mid = m["id"].as_str().unwrap().to_owned();

    for r in ["over:1", "over:2"] {
        let b = book(&app, &t.service, &frank, r, "80.00").await;
        assert_eq!(b["quote"]["coverage"], "INCLUDED", "{b}");
    }
    let third = book(&app, &t.service, &frank, "over:3", "80.00").await;
    let q = &third["quote"];
    assert_eq!(q["coverage"], "OVERAGE", "{third}");
    assert_eq!(
        amounts(q),
        ["55.00", "25.00", "2.50", "0.00", "25.00", "22.50"],
        "{q}"
    );
    assert_eq!(qty(&q["remainingAfter"]), "0");
    assert_eq!(third["holdsService"], true, "an OVERAGE booking holds too");
    assert_counts(&usage(&app, &t.admin, &mid).await, "0", "3", "0", "held");

    for r in ["over:1", "over:2", "over:3"] {
        move_to(&app, &t.service, r, "COMPLETED").await;
    }
    let after = usage(&app, &t.admin, &mid).await;
    assert_counts(&after, "3", "0", "0", "completed");
    assert_eq!(qty(&after["overageCount"]), "1", "{after}");
    assert_eq!(after["overageCharges"], "25.00", "{after}");

    // Repeating COMPLETED, even concurrently, changes nothing.
    let repeats =
        join_all((0..5).map(|_| set_status(&app, &t.service, "over:3", "COMPLETED"))).await;
    for body in &repeats {
        assert!(body.get("errors").is_none(), "{body}");
        assert_eq!(body["data"]["updateBookingStatus"]["status"], "COMPLETED");
    }
    assert_eq!(usage(&app, &t.admin, &mid).await, after, "nothing changed");
    let ev = events(&app, &t.admin, &mid).await;
    assert_eq!(ev.len(), 3, "{ev:?}");
    let overage: Vec<&Value> = ev.iter().filter(|e| e["overage"] == true).collect();
    assert_eq!(overage.len(), 1, "{ev:?}");
    assert_eq!(overage[0]["charge"], "25.00");
    assert_eq!(overage[0]["booking"]["reference"], "over:3");
    assert_eq!(overage[0]["kind"], "USAGE");
    for e in ev.iter().filter(|e| e["overage"] == false) {
        assert_eq!(e["charge"], "0.00", "{e}");
    }

    // The outbox sends one invoice item on the subscription's customer.
    let invoice_items = || -> Vec<Value> {
        fake.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r["path"] == "/v1/invoiceitems")
            .cloned()
            .collect()
    };
    let started = std::time::Instant::now();
    while invoice_items().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no invoice item sent: {:?}",
            fake.requests.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Three more runs of the outbox, and the status repeated once more: still one.
    move_to(&app, &t.service, "over:3", "COMPLETED").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fake.invoice_items.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "{:?}",
        invoice_items()
    );
    let sent = invoice_items();
    let key = sent[0]["idempotencyKey"].as_str().unwrap_or("").to_owned();
    assert!(key.starts_with("tollgate-overage-"), "{sent:?}");
    for r in &sent {
        assert_eq!(
            r["idempotencyKey"],
            key.as_str(),
            "one charge, one key: {r}"
        );
        assert_eq!(
            (
                r["form"]["customer"].as_str(),
                r["form"]["amount"].as_str(),
                r["form"]["currency"].as_str(),
                r["stripeAccount"].as_str(),
            ),
            (
                Some("cus_member_1"),
                Some("2500"),
                Some("usd"),
                Some("acct_1")
            ),
            "{r}"
        );
    }
    let lookups: Vec<Value> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["path"] == "/v1/subscriptions/sub_member_1")
        .cloned()
        .collect();
    assert!(
        !lookups.is_empty(),
        "the subscription's customer is asked of Stripe"
    );
    for r in &lookups {
        assert_eq!(r["method"], "GET");
        assert_eq!(
            r["stripeAccount"], "acct_1",
            "the subscription lives on the connected account: {r}"
        );
    }

    // A member without a Stripe subscription: counted, never sent.
    let gina = customer(&app, &t, "member_2").await;
    let g = subscribe(&app, &t, &gina, "plus", json!({})).await;
    for r in ["g:1", "g:2", "g:3"] {
        book(&app, &t.service, &gina, r, "80.00").await;
        move_to(&app, &t.service, r, "COMPLETED").await;
    }
    let gu = usage(&app, &t.admin, g["id"].as_str().unwrap()).await;
    assert_eq!(
        (qty(&gu["overageCount"]), gu["overageCharges"].as_str()),
        ("1".to_owned(), Some("25.00")),
        "{gu}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        fake.invoice_items.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "nothing billed without a Stripe subscription: {:?}",
        invoice_items()
    );
    assert!(
        invoice_items()
            .iter()
            .all(|r| r["idempotencyKey"] == key.as_str()),
        "{:?}",
        invoice_items()
    );
    recompute_is_clean(&app).await;
}
crate::per_engine!(
    seed_overage_billed_once,
    super::overage_is_charged_counted_and_billed_once
);

// ---- 3. the seed's scenario 3: credits, reset, a report for a date range ----

/// Seed scenario 3: an ADMIN credits 3 services (bonusServices 3, totalAllowance 8), corrects and
/// resets the usage, each a ledger event with its actor and reason (a correction below zero or
/// without a reason is refused and writes nothing); usageEvents reports a date range and pages;
/// bonus services do not roll over into the next cycle.
async fn credits_reset_and_report(app: TestApp) {
    let t = tenant(&app, "spa", "10").await;
    membership_plan(&app, &t, "five", 5, json!({})).await;
    let erin = customer(&app, &t, "erin").await;
    set_clock(&app, "2027-03-01T09:00:00Z");
    let m = subscribe(
        &app,
        &t,
        &erin,
        "five",
        json!({ "startsAt": "2027-03-01T09:00:00Z" }),
    )
    .await;
    let mid = m["id"].as_str().unwrap().to_owned();
    let actor = format!("user-admin-{}", &t.id[..8]);

    set_clock(&app, "2027-03-02T12:00:00Z");
    book(&app, &t.service, &erin, "r:1", "60.00").await;
    move_to(&app, &t.service, "r:1", "COMPLETED").await;

    set_clock(&app, "2027-03-05T12:00:00Z");
    let correction = |q: &str, reason: &str| json!({ "i": { "membershipId": mid, "quantity": q, "reason": reason } });
    let u = app
        .ok(
            &t.admin,
            GRANT,
            correction("3", "service delay compensation"),
        )
        .await["grantMembershipCredit"]
        .clone();
    assert_eq!(u["includedServices"], 5, "{u}");
    assert_eq!(
        (qty(&u["bonusServices"]), qty(&u["totalAllowance"])),
        ("3".to_owned(), "8".to_owned()),
        "{u}"
    );
    assert_counts(&u, "1", "0", "7", "after the credit");

    set_clock(&app, "2027-03-10T12:00:00Z");
    for r in ["r:2", "r:3"] {
        book(&app, &t.service, &erin, r, "60.00").await;
        move_to(&app, &t.service, r, "COMPLETED").await;
    }
    assert_counts(&usage(&app, &t.admin, &mid).await, "3", "0", "5", "3 used");

    set_clock(&app, "2027-03-12T12:00:00Z");
    let u = app
        .ok(&t.admin, ADJUST, correction("-1", "duplicate booking"))
        .await["adjustMembershipUsage"]
        .clone();
    assert_counts(&u, "2", "0", "6", "adjusted");
    // Below zero, or without a reason, or a credit that is not positive: refused, nothing written.
    for (doc, input) in [
        (ADJUST, correction("-5", "too much")),
        (ADJUST, correction("1", "")),
        (GRANT, correction("0", "nothing")),
        (GRANT, correction("-1", "negative")),
        (GRANT, correction("1", "")),
        (RESET, json!({ "i": { "membershipId": mid, "reason": "" } })),
    ] {
        let body = app.gql(&t.admin, doc, input.clone()).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{input}: {body}");
    }
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "2",
        "0",
        "6",
        "refusals wrote nothing",
    );

    set_clock(&app, "2027-03-15T12:00:00Z");
    let u = app
        .ok(
            &t.admin,
            RESET,
            json!({ "i": { "membershipId": mid, "reason": "goodwill reset" } }),
        )
        .await["resetMembershipUsage"]
        .clone();
    assert_counts(&u, "0", "0", "8", "reset");
    assert_eq!(
        qty(&u["bonusServices"]),
        "3",
        "a reset keeps the credit: {u}"
    );

    // The ledger, newest first, each change with its actor and reason.
    let ev = events(&app, &t.admin, &mid).await;
    let kinds: Vec<&str> = ev.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["RESET", "ADJUSTMENT", "USAGE", "USAGE", "CREDIT", "USAGE"],
        "{ev:?}"
    );
    let expect = [("-2", "goodwill reset"), ("-1", "duplicate booking")];
    for (e, (q, reason)) in ev.iter().zip(expect) {
        assert_eq!(
            (
                qty(&e["quantity"]),
                e["reason"].as_str(),
                e["actor"].as_str()
            ),
            (q.to_owned(), Some(reason), Some(actor.as_str())),
            "{e}"
        );
    }
    let credit = &ev[4];
    assert_eq!(
        (
            qty(&credit["quantity"]),
            credit["reason"].as_str(),
            credit["actor"].as_str()
        ),
        (
            "3".to_owned(),
            Some("service delay compensation"),
            Some(actor.as_str())
        ),
        "{credit}"
    );
    assert_near(
        &credit["occurredAt"],
        "2027-03-05T12:00:00Z",
        "the credit's time",
    );
    assert_near(
        &ev[5]["occurredAt"],
        "2027-03-02T12:00:00Z",
        "r:1's completion",
    );

    // A usage report for a date range.
    let mid_month = events_between(
        &app,
        &t.admin,
        &mid,
        Some("2027-03-04T00:00:00Z"),
        Some("2027-03-11T00:00:00Z"),
    )
    .await;
    assert_eq!(
        kinds_and_refs(&mid_month),
        [("CREDIT", ""), ("USAGE", "r:2"), ("USAGE", "r:3")],
        "{mid_month:?}"
    );
    let later = events_between(&app, &t.admin, &mid, Some("2027-03-11T00:00:00Z"), None).await;
    let kinds: Vec<&str> = later.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["RESET", "ADJUSTMENT"], "{later:?}");
    let early = events_between(&app, &t.admin, &mid, None, Some("2027-03-03T00:00:00Z")).await;
    assert_eq!(kinds_and_refs(&early), [("USAGE", "r:1")], "{early:?}");

    // Pages of the ledger.
    let page = |after: Option<String>| {
        let app = &app;
        let (token, mid) = (t.admin.clone(), mid.clone());
        async move {
            app.ok(
                &token,
                EVENTS,
                json!({ "m": mid, "first": 4, "after": after }),
            )
            .await["membership"]["usageEvents"]
                .clone()
        }
    };
    let p1 = page(None).await;
    assert_eq!(p1["nodes"].as_array().unwrap().len(), 4);
    assert_eq!(p1["pageInfo"]["hasNextPage"], true);
    let p2 = page(p1["pageInfo"]["endCursor"].as_str().map(str::to_owned)).await;
    assert_eq!(p2["pageInfo"]["hasNextPage"], false);
    let paged: Vec<Value> = p1["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .chain(p2["nodes"].as_array().unwrap())
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(
        paged,
        ev.iter().map(|e| e["id"].clone()).collect::<Vec<_>>(),
        "pages cover the ledger once, in order"
    );

    // The customer reads its own ledger.
    let me = customer_token(&app, &t.id, "erin");
    assert_eq!(events(&app, &me, &mid).await.len(), 6);

    // The next cycle: bonus services do not roll over; the past cycle stays readable.
    set_clock(&app, "2027-04-02T00:00:00Z");
    let u = usage(&app, &t.admin, &mid).await;
    assert_eq!(
        (qty(&u["bonusServices"]), qty(&u["totalAllowance"])),
        ("0".to_owned(), "5".to_owned()),
        "{u}"
    );
    assert_counts(&u, "0", "0", "5", "the next cycle");
    let past = app
        .ok(
            &t.admin,
            USAGE_AT,
            json!({ "m": mid, "at": "2027-03-20T00:00:00Z" }),
        )
        .await["membership"]["usage"]
        .clone();
    assert_eq!(
        (qty(&past["bonusServices"]), qty(&past["totalAllowance"])),
        ("3".to_owned(), "8".to_owned()),
        "{past}"
    );
    assert_counts(&past, "0", "0", "8", "March");
    recompute_is_clean(&app).await;
}
both_engines!(seed_credits_and_report, super::credits_reset_and_report);

// ---- 4. the seed's edge cases ----

/// The seed's edge cases: a booking cancelled before completion gives its service back (and can
/// never complete); createBooking is idempotent by reference; a completed booking cannot be
/// cancelled and no booking moves backwards (CONFLICT); a membership cancelled mid-cycle ends its
/// benefits at once (quotes NONE, open bookings' holds given back, nextResetAt null) and the
/// customer may subscribe again; one customer (one externalId) with memberships in two
/// organizations keeps them apart.
async fn edge_cases(app: TestApp) {
    let t = tenant(&app, "edge", "10").await;
    membership_plan(&app, &t, "five", 5, json!({})).await;
    let ann = customer(&app, &t, "ann").await;
    let m = subscribe(&app, &t, &ann, "five", json!({})).await;
    let mid = m["id"].as_str().unwrap().to_owned();
    // One ACTIVE or PAUSED membership per customer and organization.
    let body = app
        .gql(
            &t.admin,
            SUBSCRIBE,
            json!({ "i": { "customerId": ann, "planCode": "five" } }),
        )
        .await;
    assert_eq!(code(&body), Some("CONFLICT"), "{body}");

    // A booking cancelled before completion gives its service back.
    let b = book(&app, &t.service, &ann, "e:1", "80.00").await;
    assert_eq!(b["holdsService"], true);
    assert_counts(&usage(&app, &t.admin, &mid).await, "0", "1", "4", "held");
    move_to(&app, &t.service, "e:1", "ACCEPTED").await;
    let b = move_to(&app, &t.service, "e:1", "CANCELLED").await;
    assert_eq!(b["holdsService"], false, "{b}");
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "0",
        "0",
        "5",
        "given back",
    );
    // Cancelling again changes nothing; nothing moves out of CANCELLED.
    move_to(&app, &t.service, "e:1", "CANCELLED").await;
    for status in ["COMPLETED", "ACCEPTED", "INITIATED"] {
        let body = set_status(&app, &t.service, "e:1", status).await;
        assert_eq!(
            code(&body),
            Some("CONFLICT"),
            "CANCELLED -> {status}: {body}"
        );
    }
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "0",
        "0",
        "5",
        "still given back",
    );
    assert!(events(&app, &t.admin, &mid).await.is_empty());

    // Idempotent by reference: the same booking again holds nothing more; other details conflict.
    let first = book(&app, &t.service, &ann, "e:2", "80.00").await;
    let again = book(&app, &t.service, &ann, "e:2", "80.00").await;
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["quote"], first["quote"]);
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "0",
        "1",
        "4",
        "held once",
    );
    let other = customer(&app, &t, "other").await;
    for input in [
        booking_input(&ann, "e:2", "90.00"),
        booking_input(&other, "e:2", "80.00"),
    ] {
        let body = app.gql(&t.service, CREATE_BOOKING, input.clone()).await;
        assert_eq!(code(&body), Some("CONFLICT"), "{input}: {body}");
    }

    // Forward only; a completed booking cannot be cancelled; repeating a status changes nothing.
    move_to(&app, &t.service, "e:2", "ACCEPTED").await;
    let body = set_status(&app, &t.service, "e:2", "PENDING_PROVIDER").await;
    assert_eq!(code(&body), Some("CONFLICT"), "backwards: {body}");
    let accepted = move_to(&app, &t.service, "e:2", "ACCEPTED").await;
    assert_eq!(accepted["holdsService"], true);
    move_to(&app, &t.service, "e:2", "COMPLETED").await;
    for status in ["CANCELLED", "ACCEPTED", "PAYMENT_SUCCEEDED"] {
        let body = set_status(&app, &t.service, "e:2", status).await;
        assert_eq!(
            code(&body),
            Some("CONFLICT"),
            "COMPLETED -> {status}: {body}"
        );
    }
    move_to(&app, &t.service, "e:2", "COMPLETED").await;
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "1",
        "0",
        "4",
        "one used",
    );
    assert_eq!(events(&app, &t.admin, &mid).await.len(), 1);
    let body = set_status(&app, &t.service, "no-such-booking", "COMPLETED").await;
    assert_eq!(code(&body), Some("NOT_FOUND"), "{body}");

    // Cancellation mid-cycle: benefits end at once, the open booking's hold is given back.
    book(&app, &t.service, &ann, "e:3", "80.00").await;
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "1",
        "1",
        "3",
        "e:3 held",
    );
    let c = app
        .ok(
            &t.admin,
            CANCEL,
            json!({ "i": { "membershipId": mid, "reason": "moving away" } }),
        )
        .await["cancelMembership"]
        .clone();
    assert_eq!(c["status"], "CANCELLED", "{c}");
    assert!(c["nextResetAt"].is_null(), "{c}");
    assert!(!c["cancelledAt"].is_null(), "{c}");
    let u = usage(&app, &t.admin, &mid).await;
    assert_eq!(
        (qty(&u["used"]), qty(&u["held"])),
        ("1".to_owned(), "0".to_owned()),
        "holds given back: {u}"
    );
    let e3 = app.ok(&t.admin, BOOKING, json!({ "r": "e:3" })).await["booking"].clone();
    assert_eq!(e3["holdsService"], false, "{e3}");
    let q = app
        .ok(
            &t.admin,
            QUOTE,
            json!({ "i": { "customerId": ann, "servicePrice": "80.00", "currency": "usd" } }),
        )
        .await["quoteBooking"]
        .clone();
    assert_eq!(q["coverage"], "NONE", "{q}");
    assert_eq!(
        amounts(&q),
        ["0.00", "80.00", "8.00", "0.00", "80.00", "72.00"],
        "{q}"
    );
    let late = book(&app, &t.service, &ann, "e:4", "80.00").await;
    assert_eq!(
        (
            late["quote"]["coverage"].as_str(),
            late["holdsService"].as_bool()
        ),
        (Some("NONE"), Some(false)),
        "{late}"
    );
    // The open booking still completes, and uses nothing: its hold went with the membership.
    move_to(&app, &t.service, "e:3", "COMPLETED").await;
    let u = usage(&app, &t.admin, &mid).await;
    assert_eq!(
        (qty(&u["used"]), qty(&u["held"])),
        ("1".to_owned(), "0".to_owned()),
        "{u}"
    );
    for (doc, name) in [(CANCEL, "cancel"), (PAUSE, "pause"), (RESUME, "resume")] {
        let body = app
            .gql(&t.admin, doc, json!({ "i": { "membershipId": mid } }))
            .await;
        assert_eq!(
            code(&body),
            Some("CONFLICT"),
            "{name} a cancelled membership: {body}"
        );
    }
    let data = app
        .ok(
            &t.admin,
            "query($c: ID!) { customer(id: $c) { activeMembership { id } memberships { id status } } }",
            json!({ "c": ann }),
        )
        .await;
    assert!(data["customer"]["activeMembership"].is_null(), "{data}");
    assert_eq!(
        data["customer"]["memberships"],
        json!([{ "id": mid, "status": "CANCELLED" }])
    );
    // A new membership after the cancelled one starts afresh.
    let renewed = subscribe(&app, &t, &ann, "five", json!({})).await;
    assert_eq!(renewed["status"], "ACTIVE");
    assert_ne!(renewed["id"], mid.as_str());
    let renewed_id = renewed["id"].as_str().unwrap().to_owned();
    assert_counts(
        &usage(&app, &t.admin, &renewed_id).await,
        "0",
        "0",
        "5",
        "renewed",
    );

    // One customer in two organizations: two memberships that stay apart.
    let t2 = tenant(&app, "edge-two", "10").await;
    membership_plan(&app, &t2, "five", 5, json!({})).await;
    let ann2 = customer(&app, &t2, "ann").await;
    assert_ne!(ann2, ann);
    let m2 = subscribe(&app, &t2, &ann2, "five", json!({})).await;
    let m2id = m2["id"].as_str().unwrap().to_owned();
    let b2 = book(&app, &t2.service, &ann2, "e:1", "80.00").await;
    assert_eq!(b2["quote"]["coverage"], "INCLUDED", "{b2}");
    assert_eq!(b2["membership"]["id"], m2id.as_str());
    move_to(&app, &t2.service, "e:1", "COMPLETED").await;
    assert_counts(
        &usage(&app, &t2.admin, &m2id).await,
        "1",
        "0",
        "4",
        "the second organization",
    );
    assert_counts(
        &usage(&app, &t.admin, &renewed_id).await,
        "0",
        "0",
        "5",
        "the first, untouched",
    );
    let e1 = app.ok(&t.admin, BOOKING, json!({ "r": "e:1" })).await["booking"].clone();
    assert_eq!(
        e1["status"], "CANCELLED",
        "each organization has its own e:1"
    );
    let me1 = customer_token(&app, &t.id, "ann");
    let me2 = customer_token(&app, &t2.id, "ann");
    let mine = "{ viewer { customer { id memberships { id } } } }";
    let d1 = app.ok(&me1, mine, json!({})).await;
    assert_eq!(d1["viewer"]["customer"]["id"], ann.as_str());
    let ids1: BTreeSet<String> = d1["viewer"]["customer"]["memberships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids1, BTreeSet::from([mid.clone(), renewed_id.clone()]));
    let d2 = app.ok(&me2, mine, json!({})).await;
    assert_eq!(d2["viewer"]["customer"]["id"], ann2.as_str());
    assert_eq!(
        d2["viewer"]["customer"]["memberships"],
        json!([{ "id": m2id }])
    );
    let body = app.gql(&me1, MEMBERSHIP, json!({ "m": m2id })).await;
    assert_eq!(code(&body), Some("NOT_FOUND"), "{body}");
    let data = app.ok(&me2, BOOKING, json!({ "r": "e:1" })).await;
    assert_eq!(data["booking"]["status"], "COMPLETED");
    recompute_is_clean(&app).await;
}
both_engines!(seed_edge_cases, super::edge_cases);

/// linkBooking and unlinkBooking (the seed's PUT and DELETE): linking creates a missing booking or
/// attaches a guest's, priced and held as createBooking would; linking again changes nothing;
/// unlinking gives the hold back and reprices at the full price; a completed booking stays linked.
async fn link_and_unlink(app: TestApp) {
    let t = tenant(&app, "links", "10").await;
    membership_plan(&app, &t, "five", 5, json!({})).await;
    let dan = customer(&app, &t, "dan").await;
    let mid = subscribe(&app, &t, &dan, "five", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let link = |reference: &str, status: Option<&str>| {
        json!({ "i": { "reference": reference, "customerId": dan, "servicePrice": "80.00",
            "currency": "usd", "status": status } })
    };
    let b = app
        .ok(&t.admin, LINK, link("ext:1", Some("ACCEPTED")))
        .await["linkBooking"]
        .clone();
    assert_eq!(
        (
            b["status"].as_str(),
            b["quote"]["coverage"].as_str(),
            b["holdsService"].as_bool()
        ),
        (Some("ACCEPTED"), Some("INCLUDED"), Some(true)),
        "{b}"
    );
    assert_eq!(b["membership"]["id"], mid.as_str());

    // A guest's booking, then linked to the member.
    let guest = app
        .ok(
            &t.service,
            CREATE_BOOKING,
            json!({ "i": { "reference": "ext:2", "servicePrice": "80.00", "currency": "usd", "guest": true } }),
        )
        .await["createBooking"]
        .clone();
    assert!(
        guest["customer"].is_null() && guest["membership"].is_null(),
        "{guest}"
    );
    assert_eq!(
        amounts(&guest["quote"]),
        ["0.00", "80.00", "8.00", "8.00", "88.00", "72.00"],
        "{guest}"
    );
    assert_eq!(guest["holdsService"], false);
    let linked = app.ok(&t.admin, LINK, link("ext:2", None)).await["linkBooking"].clone();
    assert_eq!(linked["id"], guest["id"], "the same booking");
    assert_eq!(linked["customer"]["id"], dan.as_str());
    assert_eq!(linked["membership"]["id"], mid.as_str());
    assert_eq!(linked["quote"]["coverage"], "INCLUDED", "{linked}");
    assert_eq!(linked["holdsService"], true);
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "0",
        "2",
        "3",
        "two linked",
    );
    // Linking again changes nothing.
    let again = app
        .ok(&t.admin, LINK, link("ext:1", Some("ACCEPTED")))
        .await["linkBooking"]
        .clone();
    assert_eq!(again["id"], b["id"]);
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "0",
        "2",
        "3",
        "linked once",
    );

    let un = app
        .ok(&t.admin, UNLINK, json!({ "i": { "reference": "ext:1" } }))
        .await["unlinkBooking"]
        .clone();
    assert!(un["membership"].is_null(), "{un}");
    assert_eq!(un["holdsService"], false);
    assert_eq!(un["quote"]["coverage"], "NONE");
    assert_eq!(
        amounts(&un["quote"]),
        ["0.00", "80.00", "8.00", "0.00", "80.00", "72.00"],
        "{un}"
    );
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "0",
        "1",
        "4",
        "unlinked",
    );

    move_to(&app, &t.service, "ext:2", "COMPLETED").await;
    let body = app
        .gql(&t.admin, UNLINK, json!({ "i": { "reference": "ext:2" } }))
        .await;
    assert_eq!(code(&body), Some("CONFLICT"), "{body}");
    let body = app
        .gql(&t.admin, UNLINK, json!({ "i": { "reference": "nope" } }))
        .await;
    assert_eq!(code(&body), Some("NOT_FOUND"), "{body}");
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "1",
        "0",
        "4",
        "completed",
    );
    recompute_is_clean(&app).await;
}
both_engines!(linking, super::link_and_unlink);

// ---- 5. concurrency ----

/// 20 concurrent createBooking for a membership with 5 services left: exactly 5 INCLUDED, the rest
/// OVERAGE at the rate (or DISCOUNTED on a plan without overage, holding nothing); a reference
/// raced 10 times is one booking; then bookings complete and cancel concurrently, a service given
/// back is offered again, the counters add up and `recompute --check` finds nothing.
async fn concurrent_bookings(app: TestApp) {
    let t = tenant(&app, "busy", "10").await;
    membership_plan(
        &app,
        &t,
        "over5",
        5,
        json!({ "allowOverage": true, "overageRate": "25.00" }),
    )
    .await;
    membership_plan(&app, &t, "disc5", 5, json!({ "discountPct": "15" })).await;
    let a = customer(&app, &t, "racer-a").await;
    let b = customer(&app, &t, "racer-b").await;
    let ma = subscribe(&app, &t, &a, "over5", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mb = subscribe(&app, &t, &b, "disc5", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let app = &app;
    let service = t.service.as_str();
    let admin = t.admin.as_str();

    // One reference raced ten times: one booking, one hold.
    let racing = join_all((0..10).map(|_| {
        app.gql(
            service,
            CREATE_BOOKING,
            booking_input(&a, "same:1", "80.00"),
        )
    }))
    .await;
    let ids: BTreeSet<String> = racing
        .iter()
        .map(|r| {
            assert!(r.get("errors").is_none(), "{r}");
            r["data"]["createBooking"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{racing:?}");
    assert_counts(&usage(app, admin, &ma).await, "0", "1", "4", "held once");
    move_to(app, service, "same:1", "CANCELLED").await;

    // 20 at once for each member, 5 services left each.
    let race = |customer: String, prefix: &'static str| async move {
        join_all((0..20).map(|i| {
            app.gql(
                service,
                CREATE_BOOKING,
                booking_input(&customer, &format!("{prefix}:{i}"), "80.00"),
            )
        }))
        .await
        .into_iter()
        .map(|r| {
            assert!(r.get("errors").is_none(), "{r}");
            r["data"]["createBooking"].clone()
        })
        .collect::<Vec<Value>>()
    };
    let (booked_a, booked_b) = tokio::join!(race(a.clone(), "a"), race(b.clone(), "b"));
    let coverage = |list: &[Value]| -> HashMap<String, usize> {
        let mut n = HashMap::new();
        for b in list {
            *n.entry(b["quote"]["coverage"].as_str().unwrap().to_owned())
                .or_default() += 1;
        }
        n
    };
    assert_eq!(
        coverage(&booked_a),
        HashMap::from([("INCLUDED".to_owned(), 5), ("OVERAGE".to_owned(), 15)]),
        "{booked_a:?}"
    );
    assert_eq!(
        coverage(&booked_b),
        HashMap::from([("INCLUDED".to_owned(), 5), ("DISCOUNTED".to_owned(), 15)]),
        "{booked_b:?}"
    );
    let mut after: Vec<String> = booked_a
        .iter()
        .filter(|b| b["quote"]["coverage"] == "INCLUDED")
        .map(|b| qty(&b["quote"]["remainingAfter"]))
        .collect();
    after.sort();
    assert_eq!(after, ["0", "1", "2", "3", "4"], "each service taken once");
    for bk in &booked_a {
        assert_eq!(bk["holdsService"], true, "{bk}");
        if bk["quote"]["coverage"] == "OVERAGE" {
            assert_eq!(
                amounts(&bk["quote"]),
                ["55.00", "25.00", "2.50", "0.00", "25.00", "22.50"],
                "{bk}"
            );
        }
    }
    for bk in &booked_b {
        let discounted = bk["quote"]["coverage"] == "DISCOUNTED";
        assert_eq!(bk["holdsService"], !discounted, "{bk}");
        if discounted {
            assert_eq!(
                amounts(&bk["quote"]),
                ["12.00", "68.00", "6.80", "0.00", "68.00", "61.20"],
                "{bk}"
            );
        }
    }
    assert_counts(&usage(app, admin, &ma).await, "0", "20", "0", "a: all held");
    assert_counts(
        &usage(app, admin, &mb).await,
        "0",
        "5",
        "0",
        "b: the included held",
    );

    // a: even bookings complete, odd ones are cancelled, all at once.
    let moves = join_all((0..20).map(|i| {
        let status = if i % 2 == 0 { "COMPLETED" } else { "CANCELLED" };
        let reference = format!("a:{i}");
        async move { move_to(app, service, &reference, status).await }
    }))
    .await;
    assert_eq!(moves.len(), 20);
    let completed_overage = booked_a
        .iter()
        .filter(|b| {
            let i: usize = b["reference"].as_str().unwrap()[2..].parse().unwrap();
            i.is_multiple_of(2) && b["quote"]["coverage"] == "OVERAGE"
        })
        .count();
    let u = usage(app, admin, &ma).await;
    assert_counts(&u, "10", "0", "0", "a: settled");
    assert_eq!(
        qty(&u["overageCount"]),
        completed_overage.to_string(),
        "{u}"
    );
    assert_eq!(
        u["overageCharges"],
        format!("{}.00", 25 * completed_overage),
        "{u}"
    );
    let ev = events(app, admin, &ma).await;
    assert_eq!(ev.len(), 10, "one USAGE per completed booking: {ev:?}");
    assert_eq!(
        ev.iter().filter(|e| e["overage"] == true).count(),
        completed_overage
    );

    // b: two included bookings cancelled give their services back, offered to the next booking.
    let included_b: Vec<String> = booked_b
        .iter()
        .filter(|b| b["quote"]["coverage"] == "INCLUDED")
        .map(|b| b["reference"].as_str().unwrap().to_owned())
        .collect();
    join_all(
        included_b[..2]
            .iter()
            .map(|r| move_to(app, service, r, "CANCELLED")),
    )
    .await;
    assert_counts(
        &usage(app, admin, &mb).await,
        "0",
        "3",
        "2",
        "b: two given back",
    );
    let next = book(app, service, &b, "b:next", "80.00").await;
    assert_eq!(next["quote"]["coverage"], "INCLUDED", "{next}");
    let rest: Vec<String> = booked_b
        .iter()
        .map(|b| b["reference"].as_str().unwrap().to_owned())
        .filter(|r| !included_b[..2].contains(r))
        .chain(["b:next".to_owned()])
        .collect();
    join_all(rest.iter().map(|r| move_to(app, service, r, "COMPLETED"))).await;
    let u = usage(app, admin, &mb).await;
    assert_counts(&u, "4", "0", "1", "b: settled");
    assert_eq!(qty(&u["overageCount"]), "0");
    assert_eq!(
        events(app, admin, &mb).await.len(),
        4,
        "DISCOUNTED counts nothing"
    );

    // used + held + remaining add up for both.
    for m in [&ma, &mb] {
        let u = usage(app, admin, m).await;
        let n = |k: &str| qty(&u[k]).parse::<i64>().unwrap();
        assert_eq!(
            n("remaining"),
            (n("totalAllowance") - n("used") - n("held")).max(0),
            "{u}"
        );
    }
    recompute_is_clean(app).await;
}
both_engines!(concurrency, super::concurrent_bookings);

// ---- 6. cycles ----

/// Cycles anchored on the start, driven by the server's clock: started January 31 renews February
/// 28 (29 in 2028), March 31, April 30; the allowance resets by itself at the boundary, past cycles
/// stay readable (usage(at), usageHistory), a booking's hold and use count in the cycle it was
/// created in; startsAt may be backdated, not in the future; WEEK and YEAR; pausing stops the cycle
/// and resuming pushes its end (and the later boundaries) by the pause.
async fn cycles_follow_the_clock(app: TestApp) {
    let t = tenant(&app, "cycles", "10").await;
    membership_plan(&app, &t, "monthly", 5, json!({})).await;
    membership_plan(&app, &t, "weekly", 1, json!({ "interval": "WEEK" })).await;
    membership_plan(&app, &t, "yearly", 50, json!({ "interval": "YEAR" })).await;
    // The membership's current cycle is [start, end), and nextResetAt is its end.
    let check = |m: &Value, start: &str, end: &str, ctx: &str| {
        assert_eq!(
            (at(&m["currentCycleStart"]), at(&m["currentCycleEnd"])),
            (utc(start), utc(end)),
            "{ctx}: {m}"
        );
        assert_eq!(at(&m["nextResetAt"]), utc(end), "{ctx}: nextResetAt: {m}");
    };

    set_clock(&app, "2027-01-31T10:00:00Z");
    let c1 = customer(&app, &t, "jan31").await;
    let m1 = subscribe(
        &app,
        &t,
        &c1,
        "monthly",
        json!({ "startsAt": "2027-01-31T10:00:00Z" }),
    )
    .await;
    assert_eq!(at(&m1["startedAt"]), utc("2027-01-31T10:00:00Z"));
    check(
        &m1,
        "2027-01-31T10:00:00Z",
        "2027-02-28T10:00:00Z",
        "first cycle",
    );
    let mid = m1["id"].as_str().unwrap().to_owned();
    book(&app, &t.service, &c1, "jan:1", "80.00").await;
    move_to(&app, &t.service, "jan:1", "COMPLETED").await;
    book(&app, &t.service, &c1, "jan:2", "80.00").await;

    set_clock(&app, "2027-02-28T09:59:59Z");
    let m = membership(&app, &t.admin, &mid).await;
    check(
        &m,
        "2027-01-31T10:00:00Z",
        "2027-02-28T10:00:00Z",
        "a second before",
    );
    assert_counts(&m["usage"], "1", "1", "3", "a second before");

    set_clock(&app, "2027-02-28T10:00:00Z");
    let m = membership(&app, &t.admin, &mid).await;
    check(
        &m,
        "2027-02-28T10:00:00Z",
        "2027-03-31T10:00:00Z",
        "at the boundary",
    );
    assert_counts(&m["usage"], "0", "0", "5", "reset by itself");
    assert_eq!(at(&m["usage"]["cycleStart"]), utc("2027-02-28T10:00:00Z"));
    assert_eq!(at(&m["usage"]["cycleEnd"]), utc("2027-03-31T10:00:00Z"));

    set_clock(&app, "2027-03-01T00:00:00Z");
    // jan:2, created in the first cycle, completes in the second: it counts in the first.
    move_to(&app, &t.service, "jan:2", "COMPLETED").await;
    book(&app, &t.service, &c1, "mar:1", "80.00").await;
    move_to(&app, &t.service, "mar:1", "COMPLETED").await;
    let first = app
        .ok(
            &t.admin,
            USAGE_AT,
            json!({ "m": mid, "at": "2027-02-10T00:00:00Z" }),
        )
        .await["membership"]["usage"]
        .clone();
    assert_eq!(
        at(&first["cycleStart"]),
        utc("2027-01-31T10:00:00Z"),
        "{first}"
    );
    assert_eq!(
        at(&first["cycleEnd"]),
        utc("2027-02-28T10:00:00Z"),
        "{first}"
    );
    assert_counts(&first, "2", "0", "3", "the first cycle, still readable");
    assert_counts(
        &usage(&app, &t.admin, &mid).await,
        "1",
        "0",
        "4",
        "the second cycle",
    );
    let history = app
        .ok(
            &t.admin,
            HISTORY,
            json!({ "m": mid, "from": "2027-01-31T10:00:00Z", "to": "2027-03-01T00:00:00Z" }),
        )
        .await["membership"]["usageHistory"]
        .clone();
    let rows = history.as_array().unwrap();
    assert_eq!(rows.len(), 2, "{history}");
    assert_eq!(at(&rows[0]["cycleStart"]), utc("2027-01-31T10:00:00Z"));
    assert_eq!(at(&rows[1]["cycleStart"]), utc("2027-02-28T10:00:00Z"));
    assert_eq!(
        (qty(&rows[0]["used"]), qty(&rows[1]["used"])),
        ("2".to_owned(), "1".to_owned())
    );

    set_clock(&app, "2027-04-01T00:00:00Z");
    check(
        &membership(&app, &t.admin, &mid).await,
        "2027-03-31T10:00:00Z",
        "2027-04-30T10:00:00Z",
        "third cycle",
    );
    set_clock(&app, "2027-05-01T00:00:00Z");
    check(
        &membership(&app, &t.admin, &mid).await,
        "2027-04-30T10:00:00Z",
        "2027-05-31T10:00:00Z",
        "fourth cycle, from the anchor (not from April 30)",
    );

    // A leap year.
    set_clock(&app, "2028-01-31T10:00:00Z");
    let c2 = customer(&app, &t, "leap").await;
    let m2 = subscribe(
        &app,
        &t,
        &c2,
        "monthly",
        json!({ "startsAt": "2028-01-31T10:00:00Z" }),
    )
    .await;
    check(
        &m2,
        "2028-01-31T10:00:00Z",
        "2028-02-29T10:00:00Z",
        "leap year",
    );
    let m2id = m2["id"].as_str().unwrap().to_owned();

    set_clock(&app, "2028-03-01T00:00:00Z");
    check(
        &membership(&app, &t.admin, &m2id).await,
        "2028-02-29T10:00:00Z",
        "2028-03-31T10:00:00Z",
        "after February 29",
    );
    // startsAt: now by default, backdated allowed, never in the future.
    let c3 = customer(&app, &t, "default-start").await;
    let m3 = subscribe(&app, &t, &c3, "monthly", json!({})).await;
    assert_near(
        &m3["startedAt"],
        "2028-03-01T00:00:00Z",
        "startedAt defaults to the clock",
    );
    let c4 = customer(&app, &t, "backdated").await;
    let m4 = subscribe(
        &app,
        &t,
        &c4,
        "monthly",
        json!({ "startsAt": "2027-12-31T10:00:00Z" }),
    )
    .await;
    check(
        &m4,
        "2028-02-29T10:00:00Z",
        "2028-03-31T10:00:00Z",
        "backdated",
    );
    let c5 = customer(&app, &t, "future").await;
    let body = app
        .gql(
            &t.admin,
            SUBSCRIBE,
            json!({ "i": { "customerId": c5, "planCode": "monthly", "startsAt": "2028-03-02T00:00:00Z" } }),
        )
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    // WEEK and YEAR.
    let c6 = customer(&app, &t, "weekly").await;
    let m6 = subscribe(
        &app,
        &t,
        &c6,
        "weekly",
        json!({ "startsAt": "2028-02-26T10:00:00Z" }),
    )
    .await;
    check(
        &m6,
        "2028-02-26T10:00:00Z",
        "2028-03-04T10:00:00Z",
        "weekly",
    );
    let c7 = customer(&app, &t, "yearly").await;
    let m7 = subscribe(
        &app,
        &t,
        &c7,
        "yearly",
        json!({ "startsAt": "2027-06-15T00:00:00Z" }),
    )
    .await;
    check(
        &m7,
        "2027-06-15T00:00:00Z",
        "2028-06-15T00:00:00Z",
        "yearly",
    );

    // Pause and resume: the cycle stops while PAUSED and resuming pushes the boundaries.
    let c8 = customer(&app, &t, "pauser").await;
    let m8 = subscribe(
        &app,
        &t,
        &c8,
        "monthly",
        json!({ "startsAt": "2028-03-01T00:00:00Z" }),
    )
    .await;
    check(
        &m8,
        "2028-03-01T00:00:00Z",
        "2028-04-01T00:00:00Z",
        "before the pause",
    );
    let m8id = m8["id"].as_str().unwrap().to_owned();
    let me8 = customer_token(&app, &t.id, "pauser");
    set_clock(&app, "2028-03-06T00:00:00Z");
    let action = json!({ "i": { "membershipId": m8id, "reason": "travelling" } });
    let p = app.ok(&me8, PAUSE, action.clone()).await["pauseMembership"].clone();
    assert_eq!(p["status"], "PAUSED", "the customer pauses its own: {p}");
    assert_near(&p["pausedAt"], "2028-03-06T00:00:00Z", "pausedAt");
    let body = app.gql(&t.admin, PAUSE, action.clone()).await;
    assert_eq!(code(&body), Some("CONFLICT"), "paused twice: {body}");
    let q = app
        .ok(
            &t.admin,
            QUOTE,
            json!({ "i": { "customerId": c8, "servicePrice": "80.00", "currency": "usd" } }),
        )
        .await["quoteBooking"]
        .clone();
    assert_eq!(q["coverage"], "NONE", "no benefits while paused: {q}");
    let b = book(&app, &t.service, &c8, "paused:1", "80.00").await;
    assert_eq!(
        (b["quote"]["coverage"].as_str(), b["holdsService"].as_bool()),
        (Some("NONE"), Some(false)),
        "{b}"
    );
    set_clock(&app, "2028-03-16T00:00:00Z");
    let r = app.ok(&t.admin, RESUME, action.clone()).await["resumeMembership"].clone();
    assert_eq!(r["status"], "ACTIVE", "{r}");
    assert!(r["pausedAt"].is_null(), "{r}");
    assert_near(
        &r["currentCycleStart"],
        "2028-03-01T00:00:00Z",
        "the cycle's start stays",
    );
    assert_near(
        &r["currentCycleEnd"],
        "2028-04-11T00:00:00Z",
        "extended by the 10-day pause",
    );
    assert_near(
        &r["nextResetAt"],
        "2028-04-11T00:00:00Z",
        "nextResetAt follows",
    );
    let body = app.gql(&me8, RESUME, action.clone()).await;
    assert_eq!(code(&body), Some("CONFLICT"), "resumed twice: {body}");
    set_clock(&app, "2028-04-12T00:00:00Z");
    let m = membership(&app, &t.admin, &m8id).await;
    assert_near(
        &m["currentCycleStart"],
        "2028-04-11T00:00:00Z",
        "the next cycle",
    );
    assert_near(
        &m["currentCycleEnd"],
        "2028-05-11T00:00:00Z",
        "later boundaries pushed too",
    );
    recompute_is_clean(&app).await;
}
both_engines!(cycles, super::cycles_follow_the_clock);

// ---- 7. pricing ----

/// The pricing table, to the cent on every amount: coverage (INCLUDED, OVERAGE at a rate or at the
/// discounted price, DISCOUNTED, NONE for paused, no membership or benefits off), guests (the 10%
/// surcharge, also over a membership), the organization's fee (10% and 7.5%), half-up rounding,
/// a zero-decimal currency; refused prices; a quote records nothing.
async fn pricing_table(app: TestApp) {
    let ten = tenant(&app, "ten", "10").await;
    let seven = tenant(&app, "seven", "7.5").await;
    membership_plan(&app, &ten, "five", 5, json!({})).await;
    membership_plan(&app, &ten, "one", 1, json!({})).await;
    membership_plan(
        &app,
        &ten,
        "one-rate",
        1,
        json!({ "allowOverage": true, "overageRate": "25.00" }),
    )
    .await;
    membership_plan(&app, &ten, "one-norate", 1, json!({ "allowOverage": true })).await;
    membership_plan(&app, &seven, "one7", 1, json!({ "discountPct": "12.5" })).await;

    // Customers, each in the state its cases need; "used up" by a correction of +1.
    let mut ids: HashMap<&str, String> = HashMap::new();
    let mut memberships: HashMap<&str, String> = HashMap::new();
    for (t, key, plan, used_up) in [
        (&ten, "inc", Some("five"), false),
        (&ten, "disc", Some("one"), true),
        (&ten, "rate", Some("one-rate"), true),
        (&ten, "norate", Some("one-norate"), true),
        (&ten, "paused", Some("five"), false),
        (&ten, "none", None, false),
        (&seven, "inc7", Some("one7"), false),
        (&seven, "disc7", Some("one7"), true),
        (&seven, "none7", None, false),
    ] {
        let c = customer(&app, t, key).await;
        if let Some(plan) = plan {
            let m = subscribe(&app, t, &c, plan, json!({})).await["id"]
                .as_str()
                .unwrap()
                .to_owned();
            if used_up {
                app.ok(
                    &t.admin,
                    ADJUST,
                    json!({ "i": { "membershipId": m, "quantity": "1", "reason": "used elsewhere" } }),
                )
                .await;
            }
            memberships.insert(key, m);
        }
        ids.insert(key, c);
    }
    app.ok(
        &ten.admin,
        PAUSE,
        json!({ "i": { "membershipId": memberships["paused"] } }),
    )
    .await;

    // (label, org, customer ("" for none), price, currency, guest, benefits, coverage,
    //  [discount, subtotal, fee, surcharge, total, payout], remainingAfter ("null", "-": not checked))
    type Case<'a> = (
        &'a str,
        &'a Tenant,
        &'a str,
        &'a str,
        &'a str,
        bool,
        bool,
        &'a str,
        [&'a str; 6],
        &'a str,
    );
    #[rustfmt::skip]
    let cases: &[Case] = &[
        ("included", &ten, "inc", "80.00", "usd", false, true, "INCLUDED",
            ["80.00", "0.00", "0.00", "0.00", "0.00", "0.00"], "4"),
        ("benefits not applied", &ten, "inc", "80.00", "usd", false, false, "NONE",
            ["0.00", "80.00", "8.00", "0.00", "80.00", "72.00"], "-"),
        ("discounted: 15% of 33.33 is 4.9995", &ten, "disc", "33.33", "usd", false, true, "DISCOUNTED",
            ["5.00", "28.33", "2.83", "0.00", "28.33", "25.50"], "0"),
        ("discounted: 15% of 10.30 is 1.545, half-up", &ten, "disc", "10.30", "usd", false, true, "DISCOUNTED",
            ["1.55", "8.75", "0.88", "0.00", "8.75", "7.87"], "0"),
        ("overage at the rate", &ten, "rate", "80.00", "usd", false, true, "OVERAGE",
            ["55.00", "25.00", "2.50", "0.00", "25.00", "22.50"], "0"),
        ("overage without a rate: the discounted price", &ten, "norate", "33.33", "usd", false, true, "OVERAGE",
            ["5.00", "28.33", "2.83", "0.00", "28.33", "25.50"], "0"),
        ("paused: full price", &ten, "paused", "80.00", "usd", false, true, "NONE",
            ["0.00", "80.00", "8.00", "0.00", "80.00", "72.00"], "-"),
        ("no membership: 10% of 19.99 is 1.999", &ten, "none", "19.99", "usd", false, true, "NONE",
            ["0.00", "19.99", "2.00", "0.00", "19.99", "17.99"], "null"),
        ("no membership, another currency", &ten, "none", "80.00", "eur", false, true, "NONE",
            ["0.00", "80.00", "8.00", "0.00", "80.00", "72.00"], "null"),
        ("free service", &ten, "none", "0.00", "usd", false, true, "NONE",
            ["0.00", "0.00", "0.00", "0.00", "0.00", "0.00"], "null"),
        ("guest", &ten, "", "80.00", "usd", true, true, "NONE",
            ["0.00", "80.00", "8.00", "8.00", "88.00", "72.00"], "null"),
        ("guest: 10% of 33.35 is 3.335, half-up", &ten, "", "33.35", "usd", true, true, "NONE",
            ["0.00", "33.35", "3.34", "3.34", "36.69", "30.01"], "null"),
        ("guest: half a cent", &ten, "", "0.25", "usd", true, true, "NONE",
            ["0.00", "0.25", "0.03", "0.03", "0.28", "0.22"], "null"),
        ("guest flag over a membership", &ten, "inc", "50.00", "usd", true, true, "NONE",
            ["0.00", "50.00", "5.00", "5.00", "55.00", "45.00"], "null"),
        ("7.5% fee", &seven, "none7", "80.00", "usd", false, true, "NONE",
            ["0.00", "80.00", "6.00", "0.00", "80.00", "74.00"], "null"),
        ("7.5% of 33.33 is 2.49975, guest", &seven, "", "33.33", "usd", true, true, "NONE",
            ["0.00", "33.33", "2.50", "3.33", "36.66", "30.83"], "null"),
        ("7.5% fee, 12.5% discount", &seven, "disc7", "33.33", "usd", false, true, "DISCOUNTED",
            ["4.17", "29.16", "2.19", "0.00", "29.16", "26.97"], "0"),
        ("7.5% fee, included", &seven, "inc7", "120.00", "usd", false, true, "INCLUDED",
            ["120.00", "0.00", "0.00", "0.00", "0.00", "0.00"], "0"),
        ("yen, guest, 7.5%", &seven, "", "1005", "jpy", true, true, "NONE",
            ["0", "1005", "75", "101", "1106", "930"], "null"),
    ];
    assert!(cases.len() >= 12);
    for (label, t, who, price, currency, guest, benefits, coverage, expect, remaining) in cases {
        let mut input = json!({ "servicePrice": price, "currency": currency,
            "guest": guest, "applyMembershipBenefits": benefits });
        if !who.is_empty() {
            input["customerId"] = json!(ids[*who]);
        }
        let body = app.gql(&t.admin, QUOTE, json!({ "i": input })).await;
        assert!(body.get("errors").is_none(), "{label}: {body}");
        let q = &body["data"]["quoteBooking"];
        assert_eq!(q["coverage"], *coverage, "{label}: {q}");
        assert_eq!(amounts(q), (*expect).map(str::to_owned), "{label}: {q}");
        assert_eq!(q["servicePrice"], *price, "{label}: {q}");
        assert_eq!(q["currency"], *currency, "{label}: {q}");
        match *remaining {
            "-" => {}
            "null" => assert!(q["remainingAfter"].is_null(), "{label}: {q}"),
            n => assert_eq!(qty(&q["remainingAfter"]), n, "{label}: {q}"),
        }
        match *coverage {
            "INCLUDED" | "OVERAGE" | "DISCOUNTED" => {
                assert_eq!(
                    q["membership"]["id"],
                    memberships[*who].as_str(),
                    "{label}: {q}"
                )
            }
            _ if *guest || who.is_empty() || who.starts_with("none") => {
                assert!(q["membership"].is_null(), "{label}: {q}")
            }
            _ => {}
        }
    }

    // The customer's own quote (customerId omitted), and the plan's currency by default.
    let me = customer_token(&app, &ten.id, "inc");
    let q = app
        .ok(&me, QUOTE, json!({ "i": { "servicePrice": "80.00" } }))
        .await["quoteBooking"]
        .clone();
    assert_eq!(
        (
            q["coverage"].as_str(),
            q["currency"].as_str(),
            q["total"].as_str()
        ),
        (Some("INCLUDED"), Some("usd"), Some("0.00")),
        "{q}"
    );

    // Refused: a negative price, more places than the currency has, a member's quote in another
    // currency than its plan's.
    for (label, t, who, price, currency, guest) in [
        ("negative", &ten, "none", "-1.00", "usd", false),
        ("a tenth of a cent", &ten, "none", "10.005", "usd", false),
        ("half a yen", &seven, "", "10.5", "jpy", true),
        ("a member in euros", &ten, "inc", "80.00", "eur", false),
    ] {
        let mut input = json!({ "servicePrice": price, "currency": currency, "guest": guest });
        if !who.is_empty() {
            input["customerId"] = json!(ids[who]);
        }
        let body = app.gql(&t.admin, QUOTE, json!({ "i": input })).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{label}: {body}");
        let body = app
            .gql(
                &t.service,
                CREATE_BOOKING,
                json!({ "i": { "reference": format!("refused:{label}"), "customerId": ids.get(who),
                    "servicePrice": price, "currency": currency, "guest": guest } }),
            )
            .await;
        assert_eq!(
            code(&body),
            Some("BAD_USER_INPUT"),
            "createBooking, {label}: {body}"
        );
    }

    // Quotes record nothing.
    assert_counts(
        &usage(&app, &ten.admin, &memberships["inc"]).await,
        "0",
        "0",
        "5",
        "after the quotes",
    );
    assert!(
        events(&app, &ten.admin, &memberships["inc"])
            .await
            .is_empty()
    );
}
both_engines!(pricing, super::pricing_table);

// ---- 8. what a CUSTOMER may see ----

/// Sends `doc` as `token` with `$x` twice: another customer's record (`foreign`), then a random
/// one; both must answer NOT_FOUND, in the same words (the ids aside). The mismatch, if any.
async fn probe_missing(
    app: &TestApp,
    token: &str,
    label: &str,
    doc: &str,
    foreign: &str,
    random: &str,
) -> Option<String> {
    let theirs = app.gql(token, doc, json!({ "x": foreign })).await;
    let nothing = app.gql(token, doc, json!({ "x": random })).await;
    if code(&theirs) != Some("NOT_FOUND") || code(&nothing) != Some("NOT_FOUND") {
        return Some(format!(
            "{label} ({foreign}): expected NOT_FOUND, got {theirs}; with a random id: {nothing}"
        ));
    }
    let (a, b) = (
        theirs.to_string().replace(foreign, "<x>"),
        nothing.to_string().replace(random, "<x>"),
    );
    (a != b).then(|| format!("{label} ({foreign}): {a} differs from a missing one's {b}"))
}

/// A CUSTOMER token probes every membership field and mutation with other customers' ids (in its
/// organization, in another, and the same externalId in another): each answers NOT_FOUND exactly as
/// a random id; it may read itself, its membership, usage, ledger and bookings, quote and book for
/// itself; the rest of its organization and the management mutations are FORBIDDEN; nothing the
/// probes named changed.
async fn customer_sees_only_itself(app: TestApp) {
    let a = tenant(&app, "alpha", "10").await;
    let b = tenant(&app, "bravo", "10").await;
    membership_plan(&app, &a, "five", 5, json!({})).await;
    membership_plan(&app, &b, "five", 5, json!({})).await;
    let alice = customer(&app, &a, "alice").await;
    let bob = customer(&app, &a, "bob").await;
    let carol = customer(&app, &b, "carol").await;
    let alice_b = customer(&app, &b, "alice").await;
    let id = |m: Value| m["id"].as_str().unwrap().to_owned();
    let alice_m = id(subscribe(&app, &a, &alice, "five", json!({})).await);
    let bob_m = id(subscribe(&app, &a, &bob, "five", json!({})).await);
    let carol_m = id(subscribe(&app, &b, &carol, "five", json!({})).await);
    let alice_bm = id(subscribe(&app, &b, &alice_b, "five", json!({})).await);
    book(&app, &a.service, &alice, "alice:1", "80.00").await;
    book(&app, &a.service, &bob, "bob:1", "80.00").await;
    book(&app, &a.service, &bob, "bob:2", "80.00").await;
    move_to(&app, &a.service, "bob:2", "COMPLETED").await;
    book(&app, &b.service, &carol, "carol:1", "80.00").await;
    let bob_before = membership(&app, &a.admin, &bob_m).await;
    let carol_before = membership(&app, &b.admin, &carol_m).await;

    let me = customer_token(&app, &a.id, "alice");
    let random = || uuid::Uuid::new_v4().to_string();
    let mut failures: Vec<String> = Vec::new();

    // Other customers, and their memberships.
    let customer_docs: &[(&str, &str)] = &[
        (
            "customer",
            "query($x: ID!) { customer(id: $x) { id name } }",
        ),
        (
            "quoteBooking",
            "query($x: ID!) { quoteBooking(input: {customerId: $x, servicePrice: \"80.00\", currency: \"usd\"}) { coverage } }",
        ),
        (
            "createBooking",
            "mutation($x: ID!) { createBooking(input: {reference: \"probe:c\", customerId: $x, servicePrice: \"80.00\", currency: \"usd\"}) { id } }",
        ),
        (
            "linkBooking",
            "mutation($x: ID!) { linkBooking(input: {reference: \"probe:l\", customerId: $x, servicePrice: \"80.00\", currency: \"usd\"}) { id } }",
        ),
        (
            "subscribeCustomer",
            "mutation($x: ID!) { subscribeCustomer(input: {customerId: $x, planCode: \"five\"}) { id } }",
        ),
    ];
    let membership_docs: &[(&str, &str)] = &[
        (
            "membership",
            "query($x: ID!) { membership(id: $x) { id status } }",
        ),
        (
            "membership usage",
            "query($x: ID!) { membership(id: $x) { usage { used } } }",
        ),
        (
            "membership ledger",
            "query($x: ID!) { membership(id: $x) { usageEvents { nodes { id } } } }",
        ),
        (
            "membership bookings",
            "query($x: ID!) { membership(id: $x) { bookings { nodes { reference } } } }",
        ),
        (
            "pauseMembership",
            "mutation($x: ID!) { pauseMembership(input: {membershipId: $x}) { id } }",
        ),
        (
            "resumeMembership",
            "mutation($x: ID!) { resumeMembership(input: {membershipId: $x}) { id } }",
        ),
        (
            "cancelMembership",
            "mutation($x: ID!) { cancelMembership(input: {membershipId: $x}) { id } }",
        ),
        (
            "grantMembershipCredit",
            "mutation($x: ID!) { grantMembershipCredit(input: {membershipId: $x, quantity: \"1\", reason: \"probe\"}) { used } }",
        ),
        (
            "adjustMembershipUsage",
            "mutation($x: ID!) { adjustMembershipUsage(input: {membershipId: $x, quantity: \"1\", reason: \"probe\"}) { used } }",
        ),
        (
            "resetMembershipUsage",
            "mutation($x: ID!) { resetMembershipUsage(input: {membershipId: $x, reason: \"probe\"}) { used } }",
        ),
    ];
    for (label, doc) in customer_docs {
        for other in [&bob, &carol, &alice_b] {
            failures.extend(probe_missing(&app, &me, label, doc, other, &random()).await);
        }
    }
    for (label, doc) in membership_docs {
        for other in [&bob_m, &carol_m, &alice_bm] {
            failures.extend(probe_missing(&app, &me, label, doc, other, &random()).await);
        }
    }
    // Other customers' bookings, by reference.
    let booking_docs: &[(&str, &str)] = &[
        (
            "booking",
            "query($x: String!) { booking(reference: $x) { id } }",
        ),
        (
            "updateBookingStatus",
            "mutation($x: String!) { updateBookingStatus(input: {reference: $x, status: ACCEPTED}) { id } }",
        ),
        (
            "unlinkBooking",
            "mutation($x: String!) { unlinkBooking(input: {reference: $x}) { id } }",
        ),
    ];
    for (label, doc) in booking_docs {
        for reference in ["bob:1", "bob:2"] {
            let nothing = format!("nothing:{}", random());
            failures.extend(probe_missing(&app, &me, label, doc, reference, &nothing).await);
        }
    }
    // The other organization, by its id.
    let org_docs: &[(&str, &str)] = &[
        (
            "organization",
            "query($x: ID) { organization(id: $x) { id } }",
        ),
        (
            "booking",
            "query($x: ID) { booking(organizationId: $x, reference: \"carol:1\") { id } }",
        ),
        (
            "updateBookingStatus",
            "mutation($x: ID) { updateBookingStatus(input: {organizationId: $x, reference: \"carol:1\", status: ACCEPTED}) { id } }",
        ),
        (
            "unlinkBooking",
            "mutation($x: ID) { unlinkBooking(input: {organizationId: $x, reference: \"carol:1\"}) { id } }",
        ),
        (
            "quoteBooking",
            "query($x: ID) { quoteBooking(input: {organizationId: $x, servicePrice: \"80.00\", currency: \"usd\"}) { coverage } }",
        ),
        (
            "createBooking",
            "mutation($x: ID) { createBooking(input: {organizationId: $x, reference: \"probe:o\", servicePrice: \"80.00\", currency: \"usd\"}) { id } }",
        ),
        (
            "upsertMembershipPlan",
            "mutation($x: ID) { upsertMembershipPlan(input: {organizationId: $x, code: \"probe\", name: \"probe\", price: \"1.00\", interval: MONTH, servicesPerCycle: 1}) { id } }",
        ),
        (
            "createCustomer",
            "mutation($x: ID) { createCustomer(input: {organizationId: $x, name: \"probe\", externalId: \"probe\"}) { id } }",
        ),
    ];
    for (label, doc) in org_docs {
        failures.extend(probe_missing(&app, &me, label, doc, &b.id, &random()).await);
    }

    // What it may do: read itself, its membership, its bookings; quote and book for itself.
    let data = app
        .ok(
            &me,
            "{ viewer { role customer { id externalId organization { id name slug } activeMembership { id } } } }",
            json!({}),
        )
        .await;
    let c = &data["viewer"]["customer"];
    assert_eq!(data["viewer"]["role"], "CUSTOMER");
    assert_eq!(c["id"], alice.as_str());
    assert_eq!(c["organization"]["id"], a.id.as_str());
    assert_eq!(c["organization"]["slug"], "alpha");
    assert_eq!(c["activeMembership"]["id"], alice_m.as_str());
    let data = app
        .ok(
            &me,
            "query($m: ID!) { membership(id: $m) { customer { id } usage { held } usageEvents { nodes { id } } bookings { nodes { reference } } } }",
            json!({ "m": alice_m }),
        )
        .await;
    assert_eq!(data["membership"]["customer"]["id"], alice.as_str());
    assert_eq!(
        data["membership"]["bookings"]["nodes"],
        json!([{ "reference": "alice:1" }])
    );
    assert_eq!(qty(&data["membership"]["usage"]["held"]), "1");
    let data = app.ok(&me, BOOKING, json!({ "r": "alice:1" })).await;
    assert_eq!(data["booking"]["customer"]["id"], alice.as_str());
    let q = app
        .ok(
            &me,
            QUOTE,
            json!({ "i": { "servicePrice": "80.00", "currency": "usd" } }),
        )
        .await;
    assert_eq!(q["quoteBooking"]["coverage"], "INCLUDED");
    let mine = app
        .ok(
            &me,
            CREATE_BOOKING,
            json!({ "i": { "reference": "alice:2", "servicePrice": "80.00", "currency": "usd" } }),
        )
        .await["createBooking"]
        .clone();
    assert_eq!(mine["customer"]["id"], alice.as_str(), "{mine}");
    assert_eq!(mine["quote"]["coverage"], "INCLUDED");

    // FORBIDDEN: its organization beyond id, name and slug, and everything that manages.
    let own = |doc: &str| (doc.to_owned(), json!({ "m": alice_m, "c": alice }));
    let forbidden = [
        ("organization", own("{ organization { id } }")),
        (
            "organization's usage",
            own("{ viewer { customer { organization { usage { hasExceededLimits } } } } }"),
        ),
        (
            "organization's plans",
            own("{ viewer { customer { organization { membershipPlans { code } } } } }"),
        ),
        (
            "organization's customers",
            own("{ viewer { customer { organization { customers { totalCount } } } } }"),
        ),
        (
            "checkEntitlement",
            own("{ checkEntitlement(metric: \"bookings\") { allowed } }"),
        ),
        ("usageAlerts", own("{ usageAlerts { nodes { id } } }")),
        (
            "usageSummaries",
            own(
                "{ usageSummaries { nodes { periodStart organization { id } metrics { metric { code } used } } } }",
            ),
        ),
        (
            "updateBookingStatus",
            own(
                "mutation { updateBookingStatus(input: {reference: \"alice:1\", status: ACCEPTED}) { id } }",
            ),
        ),
        (
            "grantMembershipCredit",
            own(
                "mutation($m: ID!) { grantMembershipCredit(input: {membershipId: $m, quantity: \"1\", reason: \"me\"}) { used } }",
            ),
        ),
        (
            "adjustMembershipUsage",
            own(
                "mutation($m: ID!) { adjustMembershipUsage(input: {membershipId: $m, quantity: \"-1\", reason: \"me\"}) { used } }",
            ),
        ),
        (
            "resetMembershipUsage",
            own(
                "mutation($m: ID!) { resetMembershipUsage(input: {membershipId: $m, reason: \"me\"}) { used } }",
            ),
        ),
        (
            "upsertMembershipPlan",
            own(
                "mutation { upsertMembershipPlan(input: {code: \"mine\", name: \"mine\", price: \"1.00\", interval: MONTH, servicesPerCycle: 99}) { id } }",
            ),
        ),
        (
            "createCustomer",
            own(
                "mutation { createCustomer(input: {name: \"me again\", externalId: \"alice-2\"}) { id } }",
            ),
        ),
        (
            "subscribeCustomer",
            own(
                "mutation($c: ID!) { subscribeCustomer(input: {customerId: $c, planCode: \"five\"}) { id } }",
            ),
        ),
        (
            "linkBooking",
            own(
                "mutation($c: ID!) { linkBooking(input: {reference: \"alice:3\", customerId: $c, servicePrice: \"80.00\", currency: \"usd\"}) { id } }",
            ),
        ),
        (
            "unlinkBooking",
            own("mutation { unlinkBooking(input: {reference: \"alice:1\"}) { id } }"),
        ),
    ];
    for (label, (doc, vars)) in &forbidden {
        let body = app.gql(&me, doc, vars.clone()).await;
        if code(&body) != Some("FORBIDDEN") {
            failures.push(format!("{label}: expected FORBIDDEN, got {body}"));
        }
    }
    // A token whose sub is no customer of the organization: no customer.
    let stranger = customer_token(&app, &a.id, "nobody");
    let data = app
        .ok(&stranger, "{ viewer { customer { id } } }", json!({}))
        .await;
    assert!(data["viewer"]["customer"].is_null(), "{data}");

    // Nothing the probes named changed.
    assert_eq!(membership(&app, &a.admin, &bob_m).await, bob_before);
    assert_eq!(membership(&app, &b.admin, &carol_m).await, carol_before);
    let u = usage(&app, &a.admin, &alice_m).await;
    assert_counts(&u, "0", "2", "3", "alice: her two bookings only");
    for (t, reference) in [(&a, "probe:c"), (&a, "probe:l"), (&b, "probe:o")] {
        let body = app.gql(&t.admin, BOOKING, json!({ "r": reference })).await;
        assert_eq!(
            code(&body),
            Some("NOT_FOUND"),
            "{reference} was never made: {body}"
        );
    }
    let data = app
        .ok(&a.admin, "{ organization { membershipPlans(includeInactive: true) { code } customers { totalCount } } }", json!({}))
        .await;
    assert_eq!(
        data["organization"]["membershipPlans"],
        json!([{ "code": "five" }])
    );
    assert_eq!(data["organization"]["customers"]["totalCount"], 2);
    assert!(
        failures.is_empty(),
        "{} probes answered wrongly:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
both_engines!(customer_probe, super::customer_sees_only_itself);

/// The organization's roles: VIEWER and MEMBER read memberships and bookings and change nothing;
/// SERVICE creates bookings and moves them, and may not correct usage or manage plans, customers
/// or memberships; OWNER and ADMIN manage; the platform team reaches every organization's; another
/// organization's ADMIN finds nothing.
async fn organization_roles(app: TestApp) {
    let t = tenant(&app, "roles", "10").await;
    membership_plan(&app, &t, "five", 5, json!({})).await;
    let alice = customer(&app, &t, "alice").await;
    let mid = subscribe(&app, &t, &alice, "five", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    book(&app, &t.service, &alice, "r:1", "80.00").await;
    let vars = json!({ "m": mid, "c": alice, "o": t.id });
    let reads = "query($m: ID!, $c: ID!) { customer(id: $c) { name memberships { id } } \
        membership(id: $m) { usage { held } usageEvents { nodes { id } } bookings { nodes { reference } } } \
        booking(reference: \"r:1\") { status } \
        organization { membershipPlans { code } customers { totalCount nodes { id } } } \
        quoteBooking(input: {customerId: $c, servicePrice: \"80.00\", currency: \"usd\"}) { coverage } }";
    let manage: &[(&str, &str)] = &[
        (
            "upsertMembershipPlan",
            "mutation { upsertMembershipPlan(input: {code: \"x\", name: \"x\", price: \"1.00\", interval: MONTH, servicesPerCycle: 1}) { id } }",
        ),
        (
            "createCustomer",
            "mutation { createCustomer(input: {name: \"x\", externalId: \"x\"}) { id } }",
        ),
        (
            "subscribeCustomer",
            "mutation($c: ID!) { subscribeCustomer(input: {customerId: $c, planCode: \"five\"}) { id } }",
        ),
        (
            "pauseMembership",
            "mutation($m: ID!) { pauseMembership(input: {membershipId: $m}) { id } }",
        ),
        (
            "cancelMembership",
            "mutation($m: ID!) { cancelMembership(input: {membershipId: $m}) { id } }",
        ),
        (
            "grantMembershipCredit",
            "mutation($m: ID!) { grantMembershipCredit(input: {membershipId: $m, quantity: \"1\", reason: \"x\"}) { used } }",
        ),
        (
            "adjustMembershipUsage",
            "mutation($m: ID!) { adjustMembershipUsage(input: {membershipId: $m, quantity: \"1\", reason: \"x\"}) { used } }",
        ),
        (
            "resetMembershipUsage",
            "mutation($m: ID!) { resetMembershipUsage(input: {membershipId: $m, reason: \"x\"}) { used } }",
        ),
        (
            "linkBooking",
            "mutation($c: ID!) { linkBooking(input: {reference: \"r:9\", customerId: $c, servicePrice: \"80.00\", currency: \"usd\"}) { id } }",
        ),
        (
            "unlinkBooking",
            "mutation { unlinkBooking(input: {reference: \"r:1\"}) { id } }",
        ),
    ];
    let book_docs: &[(&str, &str)] = &[
        (
            "createBooking",
            "mutation($c: ID!) { createBooking(input: {reference: \"r:2\", customerId: $c, servicePrice: \"80.00\", currency: \"usd\"}) { id } }",
        ),
        (
            "updateBookingStatus",
            "mutation { updateBookingStatus(input: {reference: \"r:1\", status: ACCEPTED}) { status } }",
        ),
    ];
    for role in [Role::Viewer, Role::Member] {
        let token = app.tenant_token(&t.id, role);
        let data = app.ok(&token, reads, vars.clone()).await;
        assert_eq!(
            data["customer"]["memberships"],
            json!([{ "id": mid }]),
            "{role:?}"
        );
        assert_eq!(qty(&data["membership"]["usage"]["held"]), "1");
        assert_eq!(data["organization"]["customers"]["totalCount"], 1);
        assert_eq!(data["quoteBooking"]["coverage"], "INCLUDED");
        for (label, doc) in manage.iter().chain(book_docs) {
            let body = app.gql(&token, doc, vars.clone()).await;
            assert_eq!(code(&body), Some("FORBIDDEN"), "{role:?} {label}: {body}");
        }
    }
    for (label, doc) in manage {
        let body = app.gql(&t.service, doc, vars.clone()).await;
        assert_eq!(code(&body), Some("FORBIDDEN"), "SERVICE {label}: {body}");
    }
    for (label, doc) in book_docs {
        let body = app.gql(&t.service, doc, vars.clone()).await;
        assert!(body.get("errors").is_none(), "SERVICE {label}: {body}");
    }
    // OWNER and ADMIN correct; the platform team too, naming the membership only.
    let owner = app.tenant_token(&t.id, Role::Owner);
    let grant = "mutation($m: ID!) { grantMembershipCredit(input: {membershipId: $m, quantity: \"1\", reason: \"owner\"}) { bonusServices } }";
    app.ok(&owner, grant, vars.clone()).await;
    let data = app
        .ok(
            &app.platform_token(),
            "query($m: ID!, $c: ID!, $o: ID) { customer(id: $c) { id } membership(id: $m) { id } booking(organizationId: $o, reference: \"r:1\") { status } }",
            vars.clone(),
        )
        .await;
    assert_eq!(data["booking"]["status"], "ACCEPTED");
    let u = app.ok(&app.platform_token(), grant, vars.clone()).await;
    assert_eq!(qty(&u["grantMembershipCredit"]["bonusServices"]), "2");
    let ev = events(&app, &t.admin, &mid).await;
    let actors: BTreeSet<&str> = ev.iter().filter_map(|e| e["actor"].as_str()).collect();
    assert_eq!(
        actors,
        BTreeSet::from([
            format!("user-owner-{}", &t.id[..8]).as_str(),
            crate::helpers::PLATFORM_SUB
        ]),
        "{ev:?}"
    );
    // Another organization's ADMIN: nothing there.
    let other = tenant(&app, "elsewhere", "10").await;
    for doc in [
        "query($m: ID!) { membership(id: $m) { id } }",
        "query($c: ID!) { customer(id: $c) { id } }",
        "query($o: ID) { booking(organizationId: $o, reference: \"r:1\") { id } }",
        "mutation($m: ID!) { grantMembershipCredit(input: {membershipId: $m, quantity: \"1\", reason: \"x\"}) { used } }",
    ] {
        let body = app.gql(&other.admin, doc, vars.clone()).await;
        assert_eq!(code(&body), Some("NOT_FOUND"), "{doc}: {body}");
    }
    // The customers' search: a case-insensitive substring of the name, email or externalId; LIKE's
    // own characters are literal.
    for (search, found) in [
        ("ALI", 1),
        ("example.test", 1),
        ("customer alice", 1),
        ("nobody", 0),
        ("%", 0),
        ("_", 0),
    ] {
        let data = app
            .ok(
                &t.admin,
                "query($s: String) { organization { customers(search: $s) { totalCount nodes { id } } } }",
                json!({ "s": search }),
            )
            .await;
        let c = &data["organization"]["customers"];
        assert_eq!(c["totalCount"], found, "search {search:?}: {c}");
        assert_eq!(
            c["nodes"].as_array().unwrap().len(),
            found as usize,
            "search {search:?}: {c}"
        );
    }
}
both_engines!(roles, super::organization_roles);

// ---- 9. live ----

/// Waits (at most 5 s) until `n` subscriptions listen on the bus; a subscription that listens some
/// other way is left to prove itself by its messages.
async fn until_listening(app: &TestApp, n: usize) {
    for _ in 0..500 {
        if app.state.engine.bus.listeners() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next `membershipUpdated` result on `ws` that satisfies `want`, within 10 s.
async fn pushed_until(ws: &mut Ws, want: impl Fn(&Value) -> bool, ctx: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        match ws.next_within(Duration::from_millis(500)).await {
            Some(Event::Msg(m)) if m["type"] == "ping" || m["type"] == "ka" => {}
            Some(Event::Msg(m)) => {
                assert_eq!(m["type"], "next", "{ctx}: {m}");
                let v = m["payload"]["data"]["membershipUpdated"].clone();
                if want(&v) {
                    return v;
                }
                seen.push(v);
            }
            Some(other) => panic!("{ctx}: {other:?}"),
            None => {}
        }
    }
    panic!("{ctx}: not pushed within 10 s; seen {seen:?}");
}

/// membershipUpdated pushes a customer's own membership after each change of its usage or status
/// (a booking held, completed, a pause, its own cancellation); another customer subscribing to it
/// is answered as for a missing membership, and a customer may not subscribe to its organization's
/// usageUpdated.
async fn membership_updates_reach_the_customer(app: TestApp) {
    let t = tenant(&app, "live", "10").await;
    membership_plan(&app, &t, "five", 5, json!({})).await;
    let alice = customer(&app, &t, "alice").await;
    customer(&app, &t, "bob").await;
    let mid = subscribe(&app, &t, &alice, "five", json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let doc = "subscription($m: ID!) { membershipUpdated(membershipId: $m) { id status usage { used held remaining } } }";

    let before = app.state.engine.bus.listeners();
    let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&customer_token(&app, &t.id, "alice"))).await;
    ws.subscribe("m", doc, json!({ "m": mid })).await;
    until_listening(&app, before + 1).await;

    book(&app, &t.service, &alice, "live:1", "80.00").await;
    let v = pushed_until(&mut ws, |v| qty(&v["usage"]["held"]) == "1", "held").await;
    assert_eq!(v["id"], mid.as_str());
    move_to(&app, &t.service, "live:1", "COMPLETED").await;
    let v = pushed_until(
        &mut ws,
        |v| qty(&v["usage"]["used"]) == "1" && qty(&v["usage"]["held"]) == "0",
        "completed",
    )
    .await;
    assert_eq!(qty(&v["usage"]["remaining"]), "4", "{v}");
    app.ok(&t.admin, PAUSE, json!({ "i": { "membershipId": mid } }))
        .await;
    pushed_until(&mut ws, |v| v["status"] == "PAUSED", "paused").await;
    // The customer cancels its own membership.
    let me = customer_token(&app, &t.id, "alice");
    let c = app
        .ok(
            &me,
            CANCEL,
            json!({ "i": { "membershipId": mid, "reason": "no longer needed" } }),
        )
        .await["cancelMembership"]
        .clone();
    assert_eq!(c["status"], "CANCELLED", "{c}");
    pushed_until(&mut ws, |v| v["status"] == "CANCELLED", "cancelled").await;

    // Bob may not listen to Alice's membership (as if it did not exist), nor to the organization.
    let mut bob = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    bob.init(bearer(&customer_token(&app, &t.id, "bob"))).await;
    bob.subscribe("theirs", doc, json!({ "m": mid })).await;
    let theirs = bob.message().await;
    let random = uuid::Uuid::new_v4().to_string();
    bob.subscribe("ghost", doc, json!({ "m": random })).await;
    let ghost = bob.message().await;
    assert_eq!(theirs["type"], "error", "{theirs}");
    assert_eq!(
        theirs["payload"][0]["extensions"]["code"], "NOT_FOUND",
        "{theirs}"
    );
    assert_eq!(
        theirs["payload"].to_string().replace(&mid, "<x>"),
        ghost["payload"].to_string().replace(&random, "<x>"),
        "another's membership answers as a missing one"
    );
    bob.subscribe(
        "org",
        "subscription { usageUpdated { periodStart } }",
        json!({}),
    )
    .await;
    let org = bob.message().await;
    assert_eq!(org["type"], "error", "{org}");
    assert_eq!(
        org["payload"][0]["extensions"]["code"], "FORBIDDEN",
        "{org}"
    );
}
both_engines!(live, super::membership_updates_reach_the_customer);

/// The fee structure reaches the money side: a booking's payment (recordPayment naming the booking
/// as its reference) must be the booking's total, and the platform keeps the booking's platform fee
/// plus the guest surcharge (its application fee), which platformRevenue then counts; a payment of
/// another amount for the booking is refused and records nothing. Pause, resume and cancel are
/// audited with their actor and reason (`Membership.changes`).
async fn booking_payments_and_audit(app: TestApp) {
    let t = tenant(&app, "payer", "10").await;
    // A guest pays 100.00 + 10.00 surcharge; the platform keeps 10.00 fee + 10.00 surcharge.
    let guest = app
        .ok(
            &t.service,
            CREATE_BOOKING,
            json!({ "i": { "reference": "booking:guest-1", "servicePrice": "100.00", "guest": true } }),
        )
        .await;
    assert_eq!(guest["createBooking"]["quote"]["total"], "110.00");
    let wrong = app
        .gql(
            &t.service,
            PAY,
            json!({ "i": { "stripePaymentIntentId": "pi_wrong", "amount": "100.00", "currency": "usd", "reference": "booking:guest-1" } }),
        )
        .await;
    assert_eq!(code(&wrong), Some("BAD_USER_INPUT"), "{wrong}");
    let paid = app
        .ok(
            &t.service,
            PAY,
            json!({ "i": { "stripePaymentIntentId": "pi_guest_1", "amount": "110.00", "currency": "usd", "reference": "booking:guest-1" } }),
        )
        .await;
    assert_eq!(
        (
            &paid["recordPayment"]["applicationFee"],
            &paid["recordPayment"]["netAmount"]
        ),
        (&json!("20.00"), &json!("90.00"))
    );
    // A payment without a booking keeps the plan's percent.
    let plain = app
        .ok(
            &t.service,
            PAY,
            json!({ "i": { "stripePaymentIntentId": "pi_plain", "amount": "50.00", "currency": "usd", "reference": "invoice:7" } }),
        )
        .await;
    assert_eq!(plain["recordPayment"]["applicationFee"], "5.00");
    let revenue = app
        .ok(
            &app.platform_token(),
            "{ platformRevenue { currency paymentsCount grossAmount applicationFees } }",
            json!({}),
        )
        .await;
    let row = revenue["platformRevenue"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["paymentsCount"] == 2)
        .cloned()
        .unwrap_or_else(|| panic!("{revenue}"));
    assert_eq!(
        (&row["grossAmount"], &row["applicationFees"]),
        (&json!("160.00"), &json!("25.00"))
    );

    // The audit of a membership plan: created, then its allowance changed with a reason; the
    // same definition again writes nothing; a customer may not read it.
    membership_plan(&app, &t, "five", 5, json!({})).await;
    membership_plan(&app, &t, "five", 6, json!({ "reason": "summer offer" })).await;
    membership_plan(&app, &t, "five", 6, json!({ "reason": "no change" })).await;
    const HISTORY: &str =
        "{ organization { membershipPlans { code history { actor reason before after } } } }";
    let data = app.ok(&t.admin, HISTORY, json!({})).await;
    let h = &data["organization"]["membershipPlans"][0]["history"];
    assert_eq!(h.as_array().map(Vec::len), Some(2), "{h}");
    assert_eq!(h[0]["reason"], "plan created");
    assert!(h[0]["before"].is_null());
    assert_eq!(h[1]["reason"], "summer offer");
    assert_eq!(h[1]["before"]["servicesPerCycle"], 5);
    assert_eq!(h[1]["after"]["servicesPerCycle"], 6);
    assert_eq!(h[1]["after"]["price"], "49");
    assert!(
        h[1]["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("user-admin")),
        "{h}"
    );
    membership_plan(&app, &t, "five", 5, json!({})).await;

    // The audit of a membership's status.
    let c = customer(&app, &t, "audited").await;
    let m = subscribe(&app, &t, &c, "five", json!({})).await;
    let id = m["id"].as_str().unwrap();
    let me = customer_token(&app, &t.id, "audited");
    app.ok(
        &t.admin,
        PAUSE,
        json!({ "i": { "membershipId": id, "reason": "travelling" } }),
    )
    .await;
    app.ok(&me, RESUME, json!({ "i": { "membershipId": id } }))
        .await;
    app.ok(
        &t.admin,
        CANCEL,
        json!({ "i": { "membershipId": id, "reason": "moved away" } }),
    )
    .await;
    let data = app
        .ok(
            &me,
            "query($m: ID!) { membership(id: $m) { changes { action fromStatus toStatus actor reason } } }",
            json!({ "m": id }),
        )
        .await;
    let changes: Vec<(String, String, String)> = data["membership"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap_or("").to_owned(),
                c["toStatus"].as_str().unwrap_or("").to_owned(),
                c["reason"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let s = |a: &str, b: &str, c: &str| (a.to_owned(), b.to_owned(), c.to_owned());
    assert_eq!(
        changes,
        vec![
            s("SUBSCRIBE", "ACTIVE", ""),
            s("PAUSE", "PAUSED", "travelling"),
            s("RESUME", "ACTIVE", ""),
            s("CANCEL", "CANCELLED", "moved away"),
        ]
    );
    assert_eq!(data["membership"]["changes"][2]["actor"], "audited");
    // The staff's user ids are not shown to the customer.
    assert!(
        data["membership"]["changes"][1]["actor"].is_null(),
        "{data}"
    );
    // A customer reads its membership's plan, not the plan's audit.
    let body = app
        .gql(
            &me,
            "query($m: ID!) { membership(id: $m) { plan { code history { reason } } } }",
            json!({ "m": id }),
        )
        .await;
    assert_eq!(code(&body), Some("FORBIDDEN"), "{body}");
}

both_engines!(payments_and_audit, super::booking_payments_and_audit);

/// A membership follows its Stripe subscription on the organization's connected account: a failed
/// payment (past_due) makes it PAST_DUE (no benefits: quotes are NONE), paid again ACTIVE, and a
/// cancelled subscription cancels it and gives back its holds; each change audited with the event;
/// a replayed event changes nothing, and the organization's own plan never moves.
async fn memberships_follow_stripe(engine: Engine) {
    let (url, _fake) = crate::stripe::fake_stripe().await;
    let Some(app) = crate::helpers::spawn_app(
        engine,
        &[
            "--stripe-secret-key",
            "sk_test_123",
            "--stripe-api-base",
            &url,
            "--stripe-webhook-secret",
            crate::stripe::SECRET,
        ],
    )
    .await
    else {
        return;
    };
    let t = tenant(&app, "gym", "10").await;
    app.ok(
        &t.admin,
        "mutation { createConnectAccount(input: {email: \"owner@gym.test\", country: \"us\"}) { stripeAccountId } }",
        json!({}),
    )
    .await;
    membership_plan(&app, &t, "five", 5, json!({})).await;
    let c = customer(&app, &t, "member_9").await;
    let m = subscribe(
        &app,
        &t,
        &c,
        "five",
        json!({ "stripeSubscriptionId": "sub_m9" }),
    )
    .await;
    let id = m["id"].as_str().unwrap().to_owned();
    book(&app, &t.service, &c, "gym:1", "30.00").await;
    let on_account = |id: &str, status: &str, kind: &str, created: i64| {
        let mut e: Value = serde_json::from_str(&crate::stripe::event(
            id,
            kind,
            created,
            json!({ "id": "sub_m9", "object": "subscription", "customer": "cus_m9", "status": status,
                "metadata": { "organization_id": t.id } }),
        ))
        .unwrap();
        e["account"] = json!("acct_1");
        e.to_string()
    };
    let t0 = chrono::Utc::now().timestamp() - 100;
    let (s, body) = crate::stripe::deliver(
        &app,
        &on_account("evt_m1", "past_due", "customer.subscription.updated", t0),
    )
    .await;
    assert_eq!((s, &body["outcome"]), (200, &json!("applied")), "{body}");
    assert_eq!(membership(&app, &t.admin, &id).await["status"], "PAST_DUE");
    let q = app
        .ok(
            &t.service,
            "query($c: ID!) { quoteBooking(input: {customerId: $c, servicePrice: \"30.00\"}) { coverage } }",
            json!({ "c": c }),
        )
        .await;
    assert_eq!(
        q["quoteBooking"]["coverage"], "NONE",
        "no benefits while past due"
    );
    let (_, body) = crate::stripe::deliver(
        &app,
        &on_account("evt_m1", "past_due", "customer.subscription.updated", t0),
    )
    .await;
    assert_eq!(body["outcome"], "replay");
    crate::stripe::deliver(
        &app,
        &on_account("evt_m2", "active", "customer.subscription.updated", t0 + 1),
    )
    .await;
    assert_eq!(membership(&app, &t.admin, &id).await["status"], "ACTIVE");
    crate::stripe::deliver(
        &app,
        &on_account(
            "evt_m3",
            "canceled",
            "customer.subscription.deleted",
            t0 + 2,
        ),
    )
    .await;
    let after = membership(&app, &t.admin, &id).await;
    assert_eq!(after["status"], "CANCELLED", "{after}");
    assert_counts(
        &after["usage"],
        "0",
        "0",
        "5",
        "the open booking's hold is given back",
    );
    let data = app
        .ok(
            &t.admin,
            "query($m: ID!) { membership(id: $m) { changes { action actor reason } } organization { plan { code } status } }",
            json!({ "m": id }),
        )
        .await;
    let actions: Vec<&str> = data["membership"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["SUBSCRIBE", "PAST_DUE", "REINSTATE", "CANCEL"]);
    assert_eq!(
        data["membership"]["changes"][3]["reason"],
        "Stripe event evt_m3"
    );
    assert_eq!(data["membership"]["changes"][3]["actor"], "stripe");
    assert_eq!(
        data["organization"]["plan"]["code"], "fee-10",
        "the organization's plan stays"
    );
    assert_eq!(data["organization"]["status"], "ACTIVE");
}

crate::per_engine!(follow_stripe, super::memberships_follow_stripe);

/// What an outside probe found, kept fixed: cancelling a membership prices its open bookings in
/// full (completing one later uses nothing and bills nothing); text with a NUL is refused up
/// front on both engines; a plan update keeps what it does not name and may not change the
/// interval or currency under existing memberships; usageHistory over more than 120 cycles is
/// refused, not cut; the overage of a Stripe-billed membership is not paid at booking; a booking is
/// paid once.
async fn probe_findings(app: TestApp) {
    let t = tenant(&app, "probed", "10").await;
    membership_plan(
        &app,
        &t,
        "one",
        1,
        json!({ "allowOverage": true, "overageRate": "25.00", "currency": "eur" }),
    )
    .await;
    let c = customer(&app, &t, "p1").await;
    let m = subscribe(
        &app,
        &t,
        &c,
        "one",
        json!({ "stripeSubscriptionId": "sub_p1" }),
    )
    .await;
    let id = m["id"].as_str().unwrap().to_owned();
    let b1 = app
        .ok(
            &t.service,
            CREATE_BOOKING,
            json!({ "i": { "reference": "p:1", "customerId": c, "servicePrice": "80.00" } }),
        )
        .await;
    assert_eq!(b1["createBooking"]["quote"]["coverage"], "INCLUDED");
    let b2 = app
        .ok(
            &t.service,
            CREATE_BOOKING,
            json!({ "i": { "reference": "p:2", "customerId": c, "servicePrice": "80.00" } }),
        )
        .await;
    assert_eq!(b2["createBooking"]["quote"]["coverage"], "OVERAGE");
    // The overage of a Stripe-billed membership is paid on the subscription's invoice.
    let body = app
        .gql(
            &t.service,
            PAY,
            json!({ "i": { "stripePaymentIntentId": "pi_p2", "amount": "25.00", "currency": "eur", "reference": "p:2" } }),
        )
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");

    // A plan update keeps the currency and rate it does not name; the interval cannot change.
    let plan = membership_plan(
        &app,
        &t,
        "one",
        2,
        json!({ "currency": null, "overageRate": "30.00", "allowOverage": true }),
    )
    .await;
    assert_eq!(
        (plan["currency"].as_str(), plan["overageRate"].as_str()),
        (Some("eur"), Some("30.00")),
        "{plan}"
    );
    let kept = app
        .ok(
            &t.admin,
            UPSERT_PLAN,
            json!({ "i": { "code": "one", "name": "Plan one", "price": "49.00", "interval": "MONTH", "servicesPerCycle": 2 } }),
        )
        .await;
    let kept = &kept["upsertMembershipPlan"];
    assert_eq!(
        (
            kept["currency"].as_str(),
            kept["overageRate"].as_str(),
            kept["allowOverage"].as_bool()
        ),
        (Some("eur"), Some("30.00"), Some(true)),
        "{kept}"
    );
    let body = app
        .gql(
            &t.admin,
            UPSERT_PLAN,
            json!({ "i": { "code": "one", "name": "Plan one", "price": "49.00", "interval": "WEEK", "servicesPerCycle": 2 } }),
        )
        .await;
    assert_eq!(code(&body), Some("CONFLICT"), "{body}");

    // Cancelling: both open bookings are priced in full and hold nothing; completing one later
    // uses nothing.
    app.ok(&t.admin, CANCEL, json!({ "i": { "membershipId": id } }))
        .await;
    let data = app
        .ok(&t.admin, "{ a: booking(reference: \"p:1\") { holdsService membership { id } quote { coverage total } } }", json!({}))
        .await;
    assert_eq!(data["a"]["quote"]["coverage"], "NONE", "{data}");
    assert_eq!(data["a"]["quote"]["total"], "80.00");
    assert_eq!(data["a"]["holdsService"], false);
    assert!(data["a"]["membership"].is_null());
    move_to(&app, &t.service, "p:1", "COMPLETED").await;
    move_to(&app, &t.service, "p:2", "COMPLETED").await;
    let u = usage(&app, &t.admin, &id).await;
    assert_eq!(
        (qty(&u["used"]), qty(&u["held"]), qty(&u["overageCount"])),
        ("0".to_owned(), "0".to_owned(), "0".to_owned()),
        "{u}"
    );
    // Paid once: a second payment for the same booking is a CONFLICT.
    app.ok(
        &t.service,
        PAY,
        json!({ "i": { "stripePaymentIntentId": "pi_a", "amount": "80.00", "currency": "eur", "reference": "p:1" } }),
    )
    .await;
    let body = app
        .gql(
            &t.service,
            PAY,
            json!({ "i": { "stripePaymentIntentId": "pi_b", "amount": "80.00", "currency": "eur", "reference": "p:1" } }),
        )
        .await;
    assert_eq!(code(&body), Some("CONFLICT"), "{body}");

    // NUL in any text: BAD_USER_INPUT before anything runs, as a literal or a variable.
    let body = app
        .gql(
            &t.service,
            "{ booking(reference: \"p\\u0000x\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    let body = app
        .gql(
            &t.admin,
            CREATE_BOOKING,
            json!({ "i": { "reference": "x\u{0}y", "servicePrice": "1.00" } }),
        )
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");

    // usageHistory: more than 120 cycles is refused; without `from`, the last 12.
    let w = customer(&app, &t, "weekly").await;
    membership_plan(&app, &t, "wk", 1, json!({ "interval": "WEEK" })).await;
    let wm = subscribe(
        &app,
        &t,
        &w,
        "wk",
        json!({ "startsAt": "1970-01-01T00:00:00Z" }),
    )
    .await;
    const HIST: &str = "query($m: ID!, $f: DateTime) { membership(id: $m) { usageHistory(from: $f) { cycleStart } } }";
    let body = app
        .gql(
            &t.admin,
            HIST,
            json!({ "m": wm["id"], "f": "1970-01-01T00:00:00Z" }),
        )
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    let data = app.ok(&t.admin, HIST, json!({ "m": wm["id"] })).await;
    assert_eq!(
        data["membership"]["usageHistory"].as_array().map(Vec::len),
        Some(12)
    );
    let body = app
        .gql(
            &t.admin,
            "query($m: ID!) { membership(id: $m) { usage(at: \"9999-12-20T00:00:00Z\") { cycleStart cycleEnd } } }",
            json!({ "m": wm["id"] }),
        )
        .await;
    let start = body["data"]["membership"]["usage"]["cycleStart"]
        .as_str()
        .unwrap_or("");
    assert!(start.starts_with("9999-12"), "{body}");
    // A cycle that would end past 9999-12-31 is not answered (its end would not be a date).
    let body = app
        .gql(
            &t.admin,
            "query($m: ID!) { membership(id: $m) { usage(at: \"9999-12-31T23:59:59Z\") { cycleEnd } } }",
            json!({ "m": wm["id"] }),
        )
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
}

both_engines!(probed, super::probe_findings);

/// A page of customers with their memberships, plans, current usage and history costs about the
/// same number of statements for 5 customers as for 40 (DataLoaders batch each level).
async fn a_page_of_customers_costs_constant_statements(app: TestApp) {
    let t = tenant(&app, "many", "10").await;
    membership_plan(&app, &t, "five", 5, json!({})).await;
    for i in 0..40 {
        let c = customer(&app, &t, &format!("c{i:02}")).await;
        subscribe(&app, &t, &c, "five", json!({})).await;
        if i % 4 == 0 {
            book(&app, &t.service, &c, &format!("many:{i}"), "10.00").await;
        }
    }
    let query = "query($n: Int) { organization { customers(first: $n) { totalCount nodes { name \
                 activeMembership { status nextResetAt plan { code servicesPerCycle } customer { name } \
                 usage { used held remaining } usageHistory { used } } memberships { id } } } } }";
    let mut costs = Vec::new();
    for n in [5, 40] {
        let before = app.state.statements.get();
        let data = app.ok(&t.admin, query, json!({ "n": n })).await;
        costs.push(app.state.statements.get() - before);
        let nodes = data["organization"]["customers"]["nodes"]
            .as_array()
            .unwrap();
        assert_eq!(nodes.len(), n as usize);
        assert!(
            nodes
                .iter()
                .all(|c| c["activeMembership"]["status"] == "ACTIVE")
        );
    }
    assert_eq!(
        costs[0], costs[1],
        "statements for 5 vs 40 customers: {costs:?}"
    );
    assert!(costs[1] <= 15, "a page costs {} statements", costs[1]);
}

both_engines!(
    customer_pages,
    super::a_page_of_customers_costs_constant_statements
);

/// A second outside probe, kept fixed: a cancelled booking is not paid; a booking already paid
/// keeps the price it was paid at when its membership is cancelled (only its hold is given back);
/// no cycle is answered before a membership's start, nor a cycle ending past 9999.
async fn second_probe_findings(app: TestApp) {
    let t = tenant(&app, "probed-again", "10").await;
    membership_plan(
        &app,
        &t,
        "one",
        1,
        json!({ "allowOverage": true, "overageRate": "25.00" }),
    )
    .await;
    let c = customer(&app, &t, "q1").await;
    let m = subscribe(
        &app,
        &t,
        &c,
        "one",
        json!({ "startsAt": "2026-01-31T10:00:00Z" }),
    )
    .await;
    let id = m["id"].as_str().unwrap().to_owned();
    book(&app, &t.service, &c, "q:1", "80.00").await;
    let over = book(&app, &t.service, &c, "q:2", "80.00").await;
    assert_eq!(over["quote"]["coverage"], "OVERAGE");
    app.ok(
        &t.service,
        PAY,
        json!({ "i": { "stripePaymentIntentId": "pi_q2", "amount": "25.00", "currency": "usd", "reference": "q:2" } }),
    )
    .await;
    app.ok(&t.admin, CANCEL, json!({ "i": { "membershipId": id } }))
        .await;
    let data = app
        .ok(&t.admin, "{ paid: booking(reference: \"q:2\") { holdsService quote { coverage total } } unpaid: booking(reference: \"q:1\") { quote { coverage total } } }", json!({}))
        .await;
    assert_eq!(data["paid"]["quote"]["coverage"], "OVERAGE", "{data}");
    assert_eq!(data["paid"]["quote"]["total"], "25.00");
    assert_eq!(data["paid"]["holdsService"], false);
    assert_eq!(data["unpaid"]["quote"]["total"], "80.00");
    let u = usage(&app, &t.admin, &id).await;
    assert_eq!(qty(&u["held"]), "0", "{u}");

    // A cancelled booking is not paid.
    app.ok(
        &t.service,
        CREATE_BOOKING,
        json!({ "i": { "reference": "q:3", "servicePrice": "30.00", "guest": true } }),
    )
    .await;
    move_to(&app, &t.service, "q:3", "CANCELLED").await;
    let body = app
        .gql(
            &t.service,
            PAY,
            json!({ "i": { "stripePaymentIntentId": "pi_q3", "amount": "33.00", "currency": "usd", "reference": "q:3" } }),
        )
        .await;
    assert_eq!(code(&body), Some("CONFLICT"), "{body}");

    // Before the start: no cycle.
    let data = app
        .ok(
            &t.admin,
            "query($m: ID!) { membership(id: $m) { usageHistory(from: \"2020-01-01T00:00:00Z\", to: \"2021-01-01T00:00:00Z\") { cycleStart } } }",
            json!({ "m": id }),
        )
        .await;
    assert_eq!(data["membership"]["usageHistory"], json!([]));
    let body = app
        .gql(
            &t.admin,
            "query($m: ID!) { membership(id: $m) { usage(at: \"2025-01-01T00:00:00Z\") { used } } }",
            json!({ "m": id }),
        )
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    // After the cycle its cancellation ended: none either.
    let data = app
        .ok(
            &t.admin,
            "query($m: ID!) { membership(id: $m) { usageHistory(from: \"2030-01-01T00:00:00Z\", to: \"2030-03-01T00:00:00Z\") { cycleStart } } }",
            json!({ "m": id }),
        )
        .await;
    assert_eq!(data["membership"]["usageHistory"], json!([]));
}

both_engines!(probed_again, super::second_probe_findings);

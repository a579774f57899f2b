//! The usage engine's other mutations through the real server: plan changes, time rules, reversals,
//! platform corrections, batches, the access table for every mutation, and recompute after a mixed
//! load.

use chrono::{Datelike, Duration, NaiveDate, Utc};
use serde_json::{Value, json};
use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::{TestApp, code, pluck};

const USAGE: &str = "query($p: Date) { organization { status trialEndsAt plan { code } usage(period: $p) { \
    hasExceededLimits exceededLimitsDetails metrics { metric { code } used credits allowance exceeded } } } }";

fn metric<'a>(usage: &'a Value, code: &str) -> &'a Value {
    usage["metrics"]
        .as_array()
        .expect("metrics")
        .iter()
        .find(|m| m["metric"]["code"] == code)
        .expect("metric in summary")
}

async fn alert_kinds(app: &TestApp, token: &str) -> Vec<(String, String)> {
    let data = app
        .ok(
            token,
            "{ usageAlerts(first: 100) { nodes { kind metric { code } } } }",
            json!({}),
        )
        .await;
    let nodes = &data["usageAlerts"]["nodes"];
    let mut kinds: Vec<(String, String)> = pluck(nodes, &["metric", "code"])
        .into_iter()
        .zip(pluck(nodes, &["kind"]))
        .map(|(m, k)| (m.to_owned(), k.to_owned()))
        .collect();
    kinds.sort();
    kinds
}

const CHANGE: &str = "mutation($p: String!, $r: String) { changePlan(input: {planCode: $p, reason: $r}) { \
    changeType oldPlan { code } newPlan { code } reason createdBy effectiveDate } }";

async fn plan_changes_reevaluate_and_are_audited(app: TestApp) {
    let org = app.create_org("acme", "growth").await;
    let service = app.tenant_token(&org, Role::Service);
    let admin = app.tenant_token(&org, Role::Admin);
    let body = app.record(&service, "bookings", "150").await;
    assert_eq!(body["data"]["recordUsage"]["alerts"], json!([]), "{body}");

    // A downgrade below the current usage raises LIMIT_EXCEEDED at once.
    let d = app
        .ok(&admin, CHANGE, json!({ "p": "basic", "r": "budget cut" }))
        .await;
    let change = &d["changePlan"];
    assert_eq!(change["changeType"], "DOWNGRADE");
    assert_eq!(change["oldPlan"]["code"], "growth");
    assert_eq!(change["newPlan"]["code"], "basic");
    assert_eq!(change["reason"], "budget cut");
    assert_eq!(
        change["createdBy"],
        format!("user-admin-{}", &org[..8]).as_str()
    );
    assert_eq!(
        change["effectiveDate"],
        Utc::now().date_naive().to_string().as_str()
    );
    // A change applies when it is made: a date ahead, or before the organization existed, is refused.
    for day in [
        Utc::now().date_naive() + Duration::days(30),
        NaiveDate::from_ymd_opt(2020, 1, 1).unwrap(),
    ] {
        let refused = app
            .gql(
                &admin,
                "mutation($d: Date) { changePlan(input: {planCode: \"enterprise\", effectiveDate: $d}) { changeType } }",
                json!({ "d": day.to_string() }),
            )
            .await;
        assert_eq!(code(&refused), Some("BAD_USER_INPUT"), "{day}: {refused}");
    }
    let u = app.ok(&admin, USAGE, json!({})).await;
    let usage = &u["organization"]["usage"];
    assert_eq!(usage["hasExceededLimits"], true);
    assert_eq!(
        usage["exceededLimitsDetails"],
        json!({ "bookings": { "limit": 100, "actual": 150, "exceeded_by": 50 } })
    );
    assert_eq!(
        alert_kinds(&app, &admin).await,
        [
            ("bookings".to_owned(), "LIMIT_EXCEEDED".to_owned()),
            ("bookings".to_owned(), "NEAR_LIMIT".to_owned())
        ]
    );

    // An upgrade re-evaluates too: nothing is exceeded any more.
    let d = app.ok(&admin, CHANGE, json!({ "p": "enterprise" })).await;
    assert_eq!(d["changePlan"]["changeType"], "UPGRADE");
    let u = app.ok(&admin, USAGE, json!({})).await;
    assert_eq!(u["organization"]["usage"]["hasExceededLimits"], false);
    assert_eq!(
        u["organization"]["usage"]["exceededLimitsDetails"],
        json!({})
    );
    assert_eq!(u["organization"]["plan"]["code"], "enterprise");

    // The same plan again is bad input; an unknown plan too.
    let body = app.gql(&admin, CHANGE, json!({ "p": "enterprise" })).await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    let body = app.gql(&admin, CHANGE, json!({ "p": "platinum" })).await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");

    // Back down to Basic: the alerts were re-armed by the plan changes, so they fire again.
    app.ok(&admin, CHANGE, json!({ "p": "basic" })).await;
    let exceeded = alert_kinds(&app, &admin)
        .await
        .into_iter()
        .filter(|(_, k)| k == "LIMIT_EXCEEDED")
        .count();
    assert_eq!(exceeded, 2, "LIMIT_EXCEEDED fires again after re-arming");

    // Cancel, reactivate, trials, and the transitions that make no sense (CONFLICT).
    let action = |name: &str| {
        format!(
            "mutation {{ {name}(input: {{reason: \"test\"}}) {{ changeType newPlan {{ code }} }} }}"
        )
    };
    let trial =
        "mutation { startTrial(input: {planCode: \"growth\"}) { changeType newPlan { code } } }";
    let steps: [(String, &str, Result<&str, &str>, &str); 9] = [
        (
            action("cancelSubscription"),
            "cancelSubscription",
            Ok("CANCELLED"),
            "CANCELLED",
        ),
        (
            action("cancelSubscription"),
            "cancelSubscription",
            Err("CONFLICT"),
            "CANCELLED",
        ),
        (
            CHANGE.to_owned(),
            "changePlan",
            Err("CONFLICT"),
            "CANCELLED",
        ),
        (
            action("reactivateSubscription"),
            "reactivateSubscription",
            Ok("REACTIVATED"),
            "ACTIVE",
        ),
        (
            action("reactivateSubscription"),
            "reactivateSubscription",
            Err("CONFLICT"),
            "ACTIVE",
        ),
        (action("endTrial"), "endTrial", Err("CONFLICT"), "ACTIVE"),
        (
            trial.to_owned(),
            "startTrial",
            Ok("TRIAL_STARTED"),
            "TRIALING",
        ),
        (trial.to_owned(), "startTrial", Err("CONFLICT"), "TRIALING"),
        (action("endTrial"), "endTrial", Ok("TRIAL_ENDED"), "ACTIVE"),
    ];
    for (query, field, expected, status) in steps {
        let body = app.gql(&admin, &query, json!({ "p": "growth" })).await;
        match expected {
            Ok(change) => assert_eq!(body["data"][field]["changeType"], change, "{field}: {body}"),
            Err(refusal) => assert_eq!(code(&body), Some(refusal), "{field}: {body}"),
        }
        let u = app.ok(&admin, USAGE, json!({})).await;
        assert_eq!(u["organization"]["status"], status, "after {field}");
        if status == "TRIALING" {
            assert_eq!(u["organization"]["plan"]["code"], "growth");
            let ends: chrono::DateTime<Utc> = u["organization"]["trialEndsAt"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            let hours = (ends - Utc::now()).num_hours();
            assert!(
                (13 * 24..=14 * 24).contains(&hours),
                "a 14-day trial ends in {hours}h"
            );
        }
    }

    // Every change is in the history, newest first, with its actor.
    let d = app
        .ok(
            &admin,
            "{ organization { subscriptionHistory(first: 50) { nodes { changeType createdBy } } } }",
            json!({}),
        )
        .await;
    let kinds = pluck(
        &d["organization"]["subscriptionHistory"]["nodes"],
        &["changeType"],
    );
    assert_eq!(
        kinds,
        [
            "TRIAL_ENDED",
            "TRIAL_STARTED",
            "REACTIVATED",
            "CANCELLED",
            "DOWNGRADE",
            "UPGRADE",
            "DOWNGRADE",
            "UPGRADE"
        ]
    );
    // The last (oldest) row is the organization's first plan, written when it was created.
    let first = &d["organization"]["subscriptionHistory"]["nodes"][7];
    assert_eq!(first["createdBy"], crate::helpers::PLATFORM_SUB, "{first}");

    // One trial per organization: a tenant cannot start another; the platform team can grant one.
    let again = app.gql(&admin, trial, json!({ "p": "growth" })).await;
    assert_eq!(code(&again), Some("CONFLICT"), "{again}");
    let granted = app
        .gql(
            &app.platform_token(),
            "mutation($o: ID) { startTrial(input: {organizationId: $o}) { changeType } }",
            json!({ "o": org }),
        )
        .await;
    assert_eq!(
        granted["data"]["startTrial"]["changeType"], "TRIAL_STARTED",
        "{granted}"
    );
}
both_engines!(plan_changes, super::plan_changes_reevaluate_and_are_audited);

/// The first instant of the current month, minus `days` days, at noon: a time in the previous period.
fn last_month(days: i64) -> chrono::DateTime<Utc> {
    let today = Utc::now().date_naive();
    let first = NaiveDate::from_ymd_opt(today.year(), today.month(), 1).unwrap();
    (first - Duration::days(days))
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc()
}

const RECORD_AT: &str = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { accepted \
    event { periodStart occurredAt } usage { used } } }";

async fn occurred_at_decides_the_period(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let t = app.tenant_token(&org, Role::Service);
    let at = |when: chrono::DateTime<Utc>| json!({ "i": { "metric": "bookings", "quantity": "1", "occurredAt": when.to_rfc3339() } });
    let future = app
        .gql(&t, RECORD_AT, at(Utc::now() + Duration::hours(1)))
        .await;
    assert_eq!(code(&future), Some("BAD_USER_INPUT"), "{future}");
    let too_old = app
        .gql(&t, RECORD_AT, at(Utc::now() - Duration::days(36)))
        .await;
    assert_eq!(code(&too_old), Some("BAD_USER_INPUT"), "{too_old}");
    assert!(
        too_old["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("35 days")
    );
    // A small clock skew is fine.
    let skewed = app
        .ok(&t, RECORD_AT, at(Utc::now() + Duration::seconds(30)))
        .await;
    assert_eq!(skewed["recordUsage"]["accepted"], true);

    // A late event lands in its own period and re-evaluates that period only.
    let when = last_month(1);
    let late = app
        .ok(
            &t,
            RECORD_AT,
            json!({ "i": { "metric": "bookings", "quantity": "101", "occurredAt": when.to_rfc3339() } }),
        )
        .await;
    let previous = when.date_naive().with_day(1).unwrap().to_string();
    assert_eq!(
        late["recordUsage"]["event"]["periodStart"],
        previous.as_str()
    );
    assert_eq!(late["recordUsage"]["usage"]["used"], "101");
    let then = app.ok(&t, USAGE, json!({ "p": previous })).await;
    let usage = &then["organization"]["usage"];
    assert_eq!(usage["hasExceededLimits"], true);
    assert_eq!(
        usage["exceededLimitsDetails"],
        json!({ "bookings": { "limit": 100, "actual": 101, "exceeded_by": 1 } })
    );
    let now = app.ok(&t, USAGE, json!({})).await;
    assert_eq!(
        metric(&now["organization"]["usage"], "bookings")["used"],
        "1"
    );
    assert_eq!(now["organization"]["usage"]["hasExceededLimits"], false);
}
both_engines!(time, super::occurred_at_decides_the_period);

const REVERSE: &str = "mutation($r: String!) { reverseUsage(input: {reference: $r, reason: \"cancelled\"}) { \
    reversedEvents { kind quantity reference reason } usage { metric { code } used } } }";

async fn reversal_is_idempotent(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let t = app.tenant_token(&org, Role::Service);
    let rec = "mutation($q: Decimal!, $k: String) { recordUsage(input: {metric: \"bookings\", quantity: $q, \
               reference: \"booking:42\", idempotencyKey: $k}) { accepted } }";
    app.ok(&t, rec, json!({ "q": "2", "k": "a" })).await;
    app.ok(&t, rec, json!({ "q": "3", "k": "b" })).await;
    app.record(&t, "bookings", "10").await;
    let d = app.ok(&t, REVERSE, json!({ "r": "booking:42" })).await;
    let events = d["reverseUsage"]["reversedEvents"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{d}");
    assert!(
        events
            .iter()
            .all(|e| e["kind"] == "REVERSAL" && e["reason"] == "cancelled")
    );
    let mut quantities: Vec<&str> = events
        .iter()
        .map(|e| e["quantity"].as_str().unwrap())
        .collect();
    quantities.sort();
    assert_eq!(quantities, ["-2", "-3"]);
    assert_eq!(d["reverseUsage"]["usage"][0]["used"], "10");
    // Again, and concurrently: nothing more is reversed.
    let mut handles = Vec::new();
    for _ in 0..5 {
        let (client, url, t) = (app.client.clone(), app.url("/graphql"), t.clone());
        handles.push(tokio::spawn(async move {
            let body: Value = client
                .post(url)
                .bearer_auth(t)
                .json(&json!({ "query": REVERSE, "variables": { "r": "booking:42" } }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            body["data"]["reverseUsage"]["reversedEvents"]
                .as_array()
                .unwrap()
                .len()
        }));
    }
    for h in handles {
        assert_eq!(h.await.unwrap(), 0);
    }
    let now = app.ok(&t, USAGE, json!({})).await;
    assert_eq!(
        metric(&now["organization"]["usage"], "bookings")["used"],
        "10"
    );
    // An unknown reference reverses nothing; an empty one is bad input.
    let d = app.ok(&t, REVERSE, json!({ "r": "booking:404" })).await;
    assert_eq!(d["reverseUsage"]["reversedEvents"], json!([]));
    assert_eq!(
        code(&app.gql(&t, REVERSE, json!({ "r": " " })).await),
        Some("BAD_USER_INPUT")
    );
    // After a reset wiped the usage, a reversal removes only what is left: never below zero.
    app.ok(&t, rec, json!({ "q": "4", "k": "c" })).await;
    let reset = "mutation($o: ID!) { resetUsage(input: {organizationId: $o, metric: \"bookings\", reason: \"r\"}) { hasExceededLimits } }";
    app.ok(&app.platform_token(), reset, json!({ "o": org }))
        .await;
    let d = app.ok(&t, REVERSE, json!({ "r": "booking:42" })).await;
    assert_eq!(
        pluck(&d["reverseUsage"]["reversedEvents"], &["quantity"]),
        ["0"]
    );
    assert_eq!(d["reverseUsage"]["usage"][0]["used"], "0");
}
both_engines!(reversal, super::reversal_is_idempotent);

async fn platform_corrections_are_audited(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let t = app.tenant_token(&org, Role::Service);
    let platform = app.platform_token();
    app.record(&t, "bookings", "120").await;

    let credit = "mutation($o: ID!, $q: Decimal!, $r: String!) { grantCredit(input: {organizationId: $o, \
                  metric: \"bookings\", quantity: $q, reason: $r}) { used credits allowance exceeded } }";
    let d = app
        .ok(
            &platform,
            credit,
            json!({ "o": org, "q": "50", "r": "goodwill" }),
        )
        .await;
    assert_eq!(
        d["grantCredit"],
        json!({ "used": "120", "credits": "50", "allowance": "150", "exceeded": false })
    );
    let u = app.ok(&t, USAGE, json!({})).await;
    assert_eq!(u["organization"]["usage"]["hasExceededLimits"], false);
    assert_eq!(
        u["organization"]["usage"]["exceededLimitsDetails"],
        json!({})
    );
    for (q, r) in [("0", "x"), ("-5", "x"), ("5", ""), ("5", "   ")] {
        let body = app
            .gql(&platform, credit, json!({ "o": org, "q": q, "r": r }))
            .await;
        assert_eq!(
            code(&body),
            Some("BAD_USER_INPUT"),
            "credit {q} {r:?}: {body}"
        );
    }

    let adjust = "mutation($o: ID!, $q: Decimal!) { adjustUsage(input: {organizationId: $o, \
                  metric: \"bookings\", quantity: $q, reason: \"double-counted\"}) { used allowance } }";
    let d = app
        .ok(&platform, adjust, json!({ "o": org, "q": "-30" }))
        .await;
    assert_eq!(
        d["adjustUsage"],
        json!({ "used": "90", "allowance": "150" })
    );
    // Below zero is refused, and changes nothing.
    let body = app
        .gql(&platform, adjust, json!({ "o": org, "q": "-91" }))
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    assert_eq!(
        code(
            &app.gql(&platform, adjust, json!({ "o": org, "q": "0" }))
                .await
        ),
        Some("BAD_USER_INPUT")
    );

    let reset = "mutation($o: ID!) { resetUsage(input: {organizationId: $o, reason: \"new contract\"}) { \
                 hasExceededLimits metrics { metric { code } used credits } } }";
    let d = app.ok(&platform, reset, json!({ "o": org })).await;
    assert_eq!(metric(&d["resetUsage"], "bookings")["used"], "0");
    assert_eq!(metric(&d["resetUsage"], "bookings")["credits"], "50");

    // The ledger tells the story, with reasons and actors.
    let d = app
        .ok(
            &t,
            "{ organization { usageEvents(first: 20, metric: \"bookings\") { nodes { kind quantity reason actor } } } }",
            json!({}),
        )
        .await;
    let nodes = d["organization"]["usageEvents"]["nodes"]
        .as_array()
        .unwrap();
    let story: Vec<(&str, &str)> = nodes
        .iter()
        .map(|n| (n["kind"].as_str().unwrap(), n["quantity"].as_str().unwrap()))
        .collect();
    assert_eq!(
        story,
        [
            ("RESET", "-90"),
            ("ADJUSTMENT", "-30"),
            ("CREDIT", "50"),
            ("USAGE", "120")
        ]
    );
    assert_eq!(nodes[0]["reason"], "new contract");
    assert_eq!(nodes[0]["actor"], crate::helpers::PLATFORM_SUB);
    assert_eq!(nodes[1]["reason"], "double-counted");
    assert_eq!(nodes[2]["reason"], "goodwill");

    // A missing organization is NOT_FOUND, even for the platform team.
    let body = app
        .gql(
            &platform,
            adjust,
            json!({ "o": uuid::Uuid::new_v4().to_string(), "q": "1" }),
        )
        .await;
    assert_eq!(code(&body), Some("NOT_FOUND"), "{body}");
}
both_engines!(corrections, super::platform_corrections_are_audited);

const BATCH: &str = "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted duplicate \
    rejectionReason usage { metric { code } used } } }";

async fn batches_answer_item_by_item(app: TestApp) {
    let a = app.create_org("alpha", "basic").await;
    let b = app.create_org("bravo", "growth").await;
    let platform = app.platform_token();
    let items = json!([
        { "organizationId": a, "metric": "bookings", "quantity": "5", "idempotencyKey": "k1" },
        { "organizationId": a, "metric": "venues", "quantity": "1" },
        { "organizationId": a, "metric": "venues", "quantity": "2" },
        { "organizationId": b, "metric": "bookings", "quantity": "7" },
        { "organizationId": a, "metric": "bookings", "quantity": "5", "idempotencyKey": "k1" },
    ]);
    let d = app.ok(&platform, BATCH, json!({ "i": items })).await;
    let r = d["recordUsageBatch"].as_array().unwrap();
    assert_eq!(r.len(), 5);
    assert_eq!(r[0]["accepted"], true);
    assert_eq!(r[1]["accepted"], true);
    assert_eq!(
        r[2]["accepted"], false,
        "Basic's HARD venue limit refuses the third item"
    );
    assert!(r[2]["rejectionReason"].as_str().unwrap().contains("HARD"));
    assert_eq!(r[3]["usage"]["used"], "7");
    assert_eq!(r[4]["duplicate"], true);
    assert_eq!(r[4]["usage"]["used"], "5");

    // A malformed item fails the whole request, and nothing of it is recorded.
    let ta = app.tenant_token(&a, Role::Service);
    let bad = json!([
        { "metric": "bookings", "quantity": "1" },
        { "metric": "no_such_metric", "quantity": "1" },
    ]);
    let body = app.gql(&ta, BATCH, json!({ "i": bad })).await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    // So does an item for another tenant: NOT_FOUND, nothing recorded.
    let foreign = json!([
        { "metric": "bookings", "quantity": "1" },
        { "organizationId": b, "metric": "bookings", "quantity": "1" },
    ]);
    let body = app.gql(&ta, BATCH, json!({ "i": foreign })).await;
    assert_eq!(code(&body), Some("NOT_FOUND"), "{body}");
    let u = app.ok(&ta, USAGE, json!({})).await;
    assert_eq!(metric(&u["organization"]["usage"], "bookings")["used"], "5");
    let tb = app.tenant_token(&b, Role::Viewer);
    let u = app.ok(&tb, USAGE, json!({})).await;
    assert_eq!(metric(&u["organization"]["usage"], "bookings")["used"], "7");
}
both_engines!(batches, super::batches_answer_item_by_item);

/// Every mutation, with a valid input for organization `org` (`{org}` is replaced).
const MUTATIONS: [(&str, &str); 13] = [
    (
        "record",
        "mutation { recordUsage(input: {organizationId: \"{org}\", metric: \"bookings\", quantity: \"1\"}) { accepted } }",
    ),
    (
        "batch",
        "mutation { recordUsageBatch(inputs: [{organizationId: \"{org}\", metric: \"bookings\", quantity: \"1\"}]) { accepted } }",
    ),
    (
        "reverse",
        "mutation { reverseUsage(input: {organizationId: \"{org}\", reference: \"r1\"}) { reversedEvents { id } } }",
    ),
    (
        "change",
        "mutation { changePlan(input: {organizationId: \"{org}\", planCode: \"growth\"}) { changeType } }",
    ),
    (
        "cancel",
        "mutation { cancelSubscription(input: {organizationId: \"{org}\"}) { changeType } }",
    ),
    (
        "reactivate",
        "mutation { reactivateSubscription(input: {organizationId: \"{org}\"}) { changeType } }",
    ),
    (
        "start_trial",
        "mutation { startTrial(input: {organizationId: \"{org}\", planCode: \"growth\"}) { changeType } }",
    ),
    (
        "end_trial",
        "mutation { endTrial(input: {organizationId: \"{org}\"}) { changeType } }",
    ),
    (
        "credit",
        "mutation { grantCredit(input: {organizationId: \"{org}\", metric: \"bookings\", quantity: \"1\", reason: \"r\"}) { used } }",
    ),
    (
        "adjust",
        "mutation { adjustUsage(input: {organizationId: \"{org}\", metric: \"bookings\", quantity: \"1\", reason: \"r\"}) { used } }",
    ),
    (
        "reset",
        "mutation { resetUsage(input: {organizationId: \"{org}\", reason: \"r\"}) { hasExceededLimits } }",
    ),
    (
        "create_org",
        "mutation { createOrganization(input: {name: \"X {org}\", slug: \"x-{org}\"}) { id } }",
    ),
    (
        "upsert_plan",
        "mutation { upsertPlan(input: {code: \"p{org}\", name: \"P\", rank: 9, priceMonthly: \"1\", limits: []}) { id } }",
    ),
];

const PLATFORM_ONLY: [&str; 5] = ["credit", "adjust", "reset", "create_org", "upsert_plan"];

/// What the access table gives a role: None when allowed, else the refusal.
fn expected_refusal(role: Role, name: &str) -> Option<&'static str> {
    if PLATFORM_ONLY.contains(&name) {
        return Some("unknown");
    }
    let records = matches!(name, "record" | "batch" | "reverse");
    match role {
        Role::Viewer | Role::Member => Some("FORBIDDEN"),
        Role::Service if !records => Some("FORBIDDEN"),
        _ => None,
    }
}

async fn every_mutation_follows_the_access_table(app: TestApp) {
    let a = app.create_org("alpha", "basic").await;
    let b = app.create_org("bravo", "basic").await;
    let missing = uuid::Uuid::new_v4().to_string();
    for role in [
        Role::Viewer,
        Role::Member,
        Role::Service,
        Role::Admin,
        Role::Owner,
    ] {
        let t = app.tenant_token(&a, role);
        for (name, template) in MUTATIONS {
            let body = app.gql(&t, &template.replace("{org}", &b), json!({})).await;
            match expected_refusal(role, name) {
                Some("unknown") => {
                    let msg = body["errors"][0]["message"].as_str().unwrap_or_default();
                    assert!(msg.starts_with("Unknown field"), "{role:?} {name}: {body}");
                }
                Some(refusal) => {
                    // A lower role is refused whichever organization it names.
                    let own = app.gql(&t, &template.replace("{org}", &a), json!({})).await;
                    assert_eq!(code(&own), Some(refusal), "{role:?} {name} own: {own}");
                    assert!(
                        matches!(code(&body), Some("FORBIDDEN" | "NOT_FOUND")),
                        "{role:?} {name} foreign: {body}"
                    );
                }
                None => {
                    // Allowed for its own organization, NOT_FOUND for another tenant's, exactly as
                    // for an organization that does not exist.
                    let ghost = app
                        .gql(&t, &template.replace("{org}", &missing), json!({}))
                        .await;
                    assert_eq!(
                        code(&body),
                        Some("NOT_FOUND"),
                        "{role:?} {name} foreign: {body}"
                    );
                    assert_eq!(body["errors"], ghost["errors"], "{role:?} {name}");
                    assert!(body["data"].is_null() || body["data"] == ghost["data"]);
                }
            }
        }
    }
    // The roles that may act do succeed on their own organization.
    let admin = app.tenant_token(&a, Role::Admin);
    for name in [
        "record",
        "batch",
        "reverse",
        "change",
        "cancel",
        "reactivate",
        "start_trial",
        "end_trial",
    ] {
        let template = MUTATIONS.iter().find(|(n, _)| *n == name).unwrap().1;
        app.ok(&admin, &template.replace("{org}", &a), json!({}))
            .await;
    }
    // The platform team may do everything, on any organization.
    let platform = app.platform_token();
    for (name, template) in MUTATIONS {
        let id = if name == "create_org" || name == "upsert_plan" {
            "zz1".to_owned()
        } else {
            b.clone()
        };
        let body = app
            .gql(&platform, &template.replace("{org}", &id), json!({}))
            .await;
        // Cancelling then reactivating etc. are valid in this order; only business outcomes vary.
        assert!(
            body.get("errors").is_none() || code(&body) == Some("CONFLICT"),
            "platform {name}: {body}"
        );
    }
    // Nothing leaked into bravo from the tenants' attempts: only the platform's one recording per
    // recording mutation (record, batch) and its credit/adjust/reset.
    let tb = app.tenant_token(&b, Role::Viewer);
    let d = app
        .ok(
            &tb,
            "{ organization { usageEvents(first: 50) { nodes { kind actor } } } }",
            json!({}),
        )
        .await;
    let actors = pluck(&d["organization"]["usageEvents"]["nodes"], &["actor"]);
    assert!(
        actors.iter().all(|a| *a == crate::helpers::PLATFORM_SUB),
        "{actors:?}"
    );
}
both_engines!(access, super::every_mutation_follows_the_access_table);

/// Runs the real binary's `recompute` against the test's database.
async fn recompute_cli(app: &TestApp, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["recompute"];
    args.extend_from_slice(extra);
    crate::helpers::tollgate_cli(&app.database_url, &args).await
}

async fn recompute_finds_nothing_after_a_mixed_load(app: TestApp) {
    let mut orgs = Vec::new();
    for (i, plan) in ["basic", "growth", "enterprise", "basic"]
        .iter()
        .enumerate()
    {
        orgs.push(app.create_org(&format!("org-{i}"), plan).await);
    }
    let platform = app.platform_token();
    let mut handles = Vec::new();
    for (i, org) in orgs.iter().enumerate() {
        for worker in 0..4 {
            let (client, url) = (app.client.clone(), app.url("/graphql"));
            let t = app.tenant_token(org, Role::Service);
            let (org, platform) = (org.clone(), platform.clone());
            handles.push(tokio::spawn(async move {
                let post = |token: String, query: String, vars: Value| {
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        let body: Value = client
                            .post(url)
                            .bearer_auth(token)
                            .json(&json!({ "query": query, "variables": vars }))
                            .send()
                            .await
                            .unwrap()
                            .json()
                            .await
                            .unwrap();
                        assert!(body.get("errors").is_none() || code(&body) == Some("CONFLICT"), "{body}");
                    }
                };
                for n in 0..15 {
                    let q = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { accepted } }";
                    let reference = format!("booking:{worker}:{}", n % 5);
                    post(t.clone(), q.into(), json!({ "i": { "metric": "bookings", "quantity": "1.5", "reference": reference,
                        "idempotencyKey": format!("{worker}-{n}") } })).await;
                    post(t.clone(), q.into(), json!({ "i": { "metric": "staff", "quantity": (n % 4).to_string() } })).await;
                    if n % 5 == 0 {
                        post(t.clone(), q.into(), json!({ "i": { "metric": "revenue", "quantity": "19.99",
                            "occurredAt": last_month(2 + i as i64).to_rfc3339() } })).await;
                        post(t.clone(), REVERSE.into(), json!({ "r": format!("booking:{worker}:{}", n % 3) })).await;
                        post(platform.clone(),
                            "mutation($o: ID!) { grantCredit(input: {organizationId: $o, metric: \"bookings\", quantity: \"2\", reason: \"load\"}) { used } }".into(),
                            json!({ "o": org })).await;
                    }
                    if n == 7 && worker == 0 {
                        post(platform.clone(),
                            "mutation($o: ID!) { adjustUsage(input: {organizationId: $o, metric: \"staff\", quantity: \"1\", reason: \"load\"}) { used } }".into(),
                            json!({ "o": org })).await;
                        post(platform.clone(),
                            "mutation($o: ID!) { resetUsage(input: {organizationId: $o, metric: \"bookings\", reason: \"load\"}) { hasExceededLimits } }".into(),
                            json!({ "o": org })).await;
                    }
                    post(t.clone(), BATCH.into(), json!({ "i": [
                        { "metric": "bookings", "quantity": "1" },
                        { "metric": "venues", "quantity": (n % 3).to_string() },
                    ] })).await;
                }
            }));
        }
    }
    for h in handles {
        h.await.unwrap();
    }
    let (ok, out) = recompute_cli(&app, &["--check"]).await;
    assert!(ok, "recompute --check after the load: {out}");
    assert!(out.contains("differences 0"), "{out}");

    // A counter that drifts is found, repaired, and then checks clean.
    app.sql("UPDATE usage_counters SET used = used + 7 WHERE metric_code = 'bookings'")
        .await;
    let (ok, out) = recompute_cli(&app, &["--check"]).await;
    assert!(!ok, "--check must fail on a drifted counter: {out}");
    assert!(out.contains("bookings: stored used"), "{out}");
    let (ok, out) = recompute_cli(&app, &[]).await;
    assert!(ok, "{out}");
    let (ok, out) = recompute_cli(&app, &["--check", "--org", &orgs[0]]).await;
    assert!(ok, "{out}");
    let (ok, out) = recompute_cli(&app, &["--check"]).await;
    assert!(ok, "{out}");
}
both_engines!(recompute, super::recompute_finds_nothing_after_a_mixed_load);

const RECORD_FULL: &str = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { accepted duplicate \
    rejectionReason alerts { kind } usage { used allowance overageQuantity overageAmount enforcement } } }";

async fn overage_gauges_and_retries(app: TestApp) {
    // OVERAGE: recorded, billed past the allowance, OVERAGE_STARTED once.
    let g = app.create_org("growth-co", "growth").await;
    let t = app.tenant_token(&g, Role::Service);
    let rec = |q: &str| json!({ "i": { "metric": "bookings", "quantity": q } });
    let d = app.ok(&t, RECORD_FULL, rec("999")).await;
    assert_eq!(
        d["recordUsage"]["alerts"],
        json!([{ "kind": "NEAR_LIMIT" }])
    );
    let d = app.ok(&t, RECORD_FULL, rec("3")).await;
    let r = &d["recordUsage"];
    assert_eq!(r["accepted"], true);
    assert_eq!(
        r["alerts"],
        json!([{ "kind": "LIMIT_EXCEEDED" }, { "kind": "OVERAGE_STARTED" }])
    );
    assert_eq!(r["usage"]["overageQuantity"], "2");
    assert_eq!(r["usage"]["overageAmount"], "1.00");
    assert_eq!(r["usage"]["enforcement"], "OVERAGE");
    let d = app.ok(&t, RECORD_FULL, rec("0.5")).await;
    assert_eq!(
        d["recordUsage"]["alerts"],
        json!([]),
        "each alert fires once a period"
    );
    assert_eq!(d["recordUsage"]["usage"]["overageAmount"], "1.25");
    let d = app
        .ok(&t, "{ checkEntitlement(metric: \"bookings\", quantity: \"10\") { allowed wouldExceed used overageQuantity overageAmount } }", json!({}))
        .await;
    assert_eq!(
        d["checkEntitlement"],
        json!({ "allowed": true, "wouldExceed": true, "used": "1002.5", "overageQuantity": "12.5", "overageAmount": "6.25" })
    );

    // GAUGE: an absolute reading that carries into the next period.
    let b = app.create_org("basic-co", "basic").await;
    let tb = app.tenant_token(&b, Role::Service);
    let reading = |metric: &str, q: &str, at: Option<chrono::DateTime<Utc>>| json!({ "i": { "metric": metric, "quantity": q, "occurredAt": at.map(|a| a.to_rfc3339()) } });
    app.ok(&tb, RECORD_FULL, reading("staff", "2", Some(last_month(3))))
        .await;
    app.ok(&tb, RECORD_FULL, reading("staff", "3", Some(last_month(2))))
        .await;
    let now = app.ok(&tb, USAGE, json!({})).await;
    assert_eq!(
        metric(&now["organization"]["usage"], "staff")["used"],
        "3",
        "carried from the last reading"
    );
    let d = app.ok(&tb, RECORD_FULL, reading("staff", "1", None)).await;
    assert_eq!(d["recordUsage"]["usage"]["used"], "1");
    let prev = last_month(2).date_naive().with_day(1).unwrap().to_string();
    let then = app.ok(&tb, USAGE, json!({ "p": prev })).await;
    assert_eq!(metric(&then["organization"]["usage"], "staff")["used"], "3");
    let body = app
        .gql(&tb, RECORD_FULL, reading("staff", "-1", None))
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"));
    let body = app
        .gql(&tb, RECORD_FULL, reading("bookings", "0", None))
        .await;
    assert_eq!(
        code(&body),
        Some("BAD_USER_INPUT"),
        "a COUNTER needs a quantity above 0"
    );

    // HARD: a refusal does not consume the idempotency key; after an upgrade the retry succeeds.
    let venue =
        json!({ "i": { "metric": "venues", "quantity": "2", "idempotencyKey": "venue-2" } });
    let d = app.ok(&tb, RECORD_FULL, venue.clone()).await;
    assert_eq!(d["recordUsage"]["accepted"], false);
    assert_eq!(d["recordUsage"]["usage"]["used"], "0");
    let owner = app.tenant_token(&b, Role::Owner);
    app.ok(&owner, CHANGE, json!({ "p": "growth" })).await;
    let d = app.ok(&tb, RECORD_FULL, venue.clone()).await;
    assert_eq!(d["recordUsage"]["accepted"], true, "{d}");
    assert_eq!(d["recordUsage"]["duplicate"], false);
    assert_eq!(d["recordUsage"]["usage"]["used"], "2");
    let d = app.ok(&tb, RECORD_FULL, venue).await;
    assert_eq!(d["recordUsage"]["duplicate"], true);
    assert_eq!(d["recordUsage"]["usage"]["used"], "2");
}
both_engines!(overage_gauges_retries, super::overage_gauges_and_retries);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_repairs_drift_on_its_own_schedule() {
    let Some(app) = crate::helpers::spawn_app(
        crate::helpers::Engine::Sqlite,
        &["--recompute-interval", "1s"],
    )
    .await
    else {
        return;
    };
    let org = app.create_org("acme", "basic").await;
    let t = app.tenant_token(&org, Role::Service);
    app.record(&t, "bookings", "5").await;
    app.sql("UPDATE usage_counters SET used = used + 1000000 WHERE metric_code = 'bookings'")
        .await;
    let mut used = String::new();
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let now = app.ok(&t, USAGE, json!({})).await;
        used = metric(&now["organization"]["usage"], "bookings")["used"]
            .as_str()
            .unwrap()
            .to_owned();
        if used == "5" {
            break;
        }
    }
    assert_eq!(
        used, "5",
        "the periodic recompute repaired the drifted counter"
    );
}

async fn cached_reads_follow_every_write(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let viewer = app.tenant_token(&org, Role::Viewer);
    let service = app.tenant_token(&org, Role::Service);
    let read = |t: String| {
        let app = &app;
        async move {
            let d = app.ok(&t, USAGE, json!({})).await;
            metric(&d["organization"]["usage"], "bookings").clone()
        }
    };
    // Warm the cache, then every kind of write is visible on the next read.
    assert_eq!(read(viewer.clone()).await["used"], "0");
    app.record(&service, "bookings", "7").await;
    assert_eq!(read(viewer.clone()).await["used"], "7");
    let check = "{ checkEntitlement(metric: \"bookings\", quantity: \"1\") { used remaining } }";
    assert_eq!(
        app.ok(&viewer, check, json!({})).await["checkEntitlement"]["used"],
        "7"
    );
    app.record(&service, "bookings", "3").await;
    assert_eq!(
        app.ok(&viewer, check, json!({})).await["checkEntitlement"]["used"],
        "10"
    );
    let platform = app.platform_token();
    app.ok(
        &platform,
        "mutation($o: ID!) { grantCredit(input: {organizationId: $o, metric: \"bookings\", quantity: \"5\", reason: \"r\"}) { used } }",
        json!({ "o": org }),
    )
    .await;
    assert_eq!(read(viewer.clone()).await["allowance"], "105");
    // A plan's limits changing shows at once for every organization on it.
    app.upsert_plan(
        "basic",
        "Basic",
        1,
        "49",
        "included: \"200\", enforcement: SOFT",
    )
    .await;
    assert_eq!(read(viewer.clone()).await["allowance"], "205");
    let admin = app.tenant_token(&org, Role::Admin);
    app.ok(&admin, CHANGE, json!({ "p": "growth" })).await;
    assert_eq!(read(viewer).await["allowance"], "1005");
}
both_engines!(cache, super::cached_reads_follow_every_write);

/// DESIGN invariant 5 for plans: every change to a plan's prices or limits leaves an audit row with
/// the actor, the reason and the definition before and after; saving the same definition changes
/// nothing and writes no row; tenants cannot read the rows.
async fn plan_changes_are_audited(app: TestApp) {
    let platform = app.platform_token();
    let upsert = "mutation($i: UpsertPlanInput!) { upsertPlan(input: $i) { code priceMonthly } }";
    let mut plan = json!({ "code": "pro", "name": "Pro", "rank": 5, "priceMonthly": "99.5",
        "limits": [{ "metric": "bookings", "included": "500", "enforcement": "HARD" }] });
    app.ok(&platform, upsert, json!({ "i": plan.clone() }))
        .await;
    // The same definition again: no change, no row.
    app.ok(&platform, upsert, json!({ "i": plan.clone() }))
        .await;
    plan["priceMonthly"] = json!("129");
    plan["limits"][0]["included"] = json!("800");
    plan["reason"] = json!("2027 price list");
    app.ok(&platform, upsert, json!({ "i": plan })).await;

    let history = "query($c: String!) { planHistory(code: $c) { planCode actor reason before after createdAt } }";
    let rows = app.ok(&platform, history, json!({ "c": "pro" })).await["planHistory"].clone();
    let rows = rows.as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{rows:?}");
    let (updated, created) = (&rows[0], &rows[1]);
    assert_eq!(created["reason"], "plan created");
    assert_eq!(created["before"], Value::Null);
    assert_eq!(created["after"]["priceMonthly"], "99.5");
    assert_eq!(updated["reason"], "2027 price list");
    assert_eq!(updated["actor"], crate::helpers::PLATFORM_SUB);
    assert_eq!(updated["before"]["priceMonthly"], "99.5");
    assert_eq!(updated["before"]["limits"][0]["included"], "500");
    assert_eq!(updated["after"]["priceMonthly"], "129");
    assert_eq!(updated["after"]["limits"][0]["included"], "800");
    assert_eq!(updated["after"]["limits"][0]["enforcement"], "HARD");

    // A tenant does not know the field; an unknown plan is NOT_FOUND.
    let org = app.create_org("acme", "basic").await;
    let owner = app.tenant_token(&org, Role::Owner);
    let refused = app.gql(&owner, history, json!({ "c": "pro" })).await;
    assert_eq!(
        refused["errors"][0]["message"], "Unknown field \"planHistory\" on type \"Query\".",
        "{refused}"
    );
    let missing = app.gql(&platform, history, json!({ "c": "nope" })).await;
    assert_eq!(
        missing["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{missing}"
    );
}
both_engines!(plan_audit, super::plan_changes_are_audited);

/// DESIGN invariant 2 across a plan's new limits: the stored flags of every organization on the plan
/// follow them in the same transaction (recompute finds nothing to repair), and alerts whose
/// conditions now hold are raised.
async fn a_plans_new_limits_reach_its_organizations(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let other = app.create_org("idle", "basic").await;
    let service = app.tenant_token(&org, Role::Service);
    app.record(&service, "bookings", "50").await;
    let mut alerts = crate::ws::Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    alerts
        .init(crate::ws::bearer(&app.tenant_token(&org, Role::Viewer)))
        .await;
    let listening = app.state.engine.bus.listeners();
    alerts.subscribe("a", crate::ws::ALERTS, json!({})).await;
    app.until_listening(listening + 1).await;

    app.upsert_plan(
        "basic",
        "Basic",
        1,
        "49",
        "included: \"40\", enforcement: HARD",
    )
    .await;
    let (ok, out) = recompute_cli(&app, &["--check"]).await;
    assert!(ok, "recompute found differences after upsertPlan:\n{out}");
    let flags = "{ organization { usage { hasExceededLimits exceededLimitsDetails } } }";
    let viewer = app.tenant_token(&org, Role::Viewer);
    let usage = app.ok(&viewer, flags, json!({})).await;
    assert_eq!(
        usage["organization"]["usage"]["hasExceededLimits"], true,
        "{usage}"
    );
    let kinds: Vec<Value> = [alerts.message().await, alerts.message().await]
        .iter()
        .map(|m| m["payload"]["data"]["usageAlerts"]["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("NEAR_LIMIT"), json!("LIMIT_EXCEEDED")]);
    let idle = app.tenant_token(&other, Role::Viewer);
    let usage = app.ok(&idle, flags, json!({})).await;
    assert_eq!(usage["organization"]["usage"]["hasExceededLimits"], false);

    // Raised again: nothing is exceeded any more, and recompute still agrees.
    app.upsert_plan(
        "basic",
        "Basic",
        1,
        "49",
        "included: \"100\", enforcement: HARD",
    )
    .await;
    let (ok, out) = recompute_cli(&app, &["--check"]).await;
    assert!(ok, "{out}");
    let usage = app.ok(&viewer, flags, json!({})).await;
    assert_eq!(usage["organization"]["usage"]["hasExceededLimits"], false);
}
both_engines!(
    plan_limits_reach_flags,
    super::a_plans_new_limits_reach_its_organizations
);

/// A counter near the largest value it can hold: a recording past it is bad input, on both engines,
/// and nothing of it (nor of its batch) is written.
async fn a_counter_never_overflows(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let service = app.tenant_token(&org, Role::Service);
    app.record(&service, "revenue", "1").await;
    app.sql(&format!(
        "UPDATE usage_counters SET used = {} WHERE metric_code = 'revenue'",
        i64::MAX - 5_000
    ))
    .await;
    let events = "{ organization { usageEvents(first: 10) { nodes { quantity } } } }";
    let before = app.ok(&service, events, json!({})).await;
    let refused = app.record(&service, "revenue", "1").await;
    assert_eq!(code(&refused), Some("BAD_USER_INPUT"), "{refused}");
    let batch = app
        .gql(
            &service,
            "mutation { recordUsageBatch(inputs: [{metric: \"bookings\", quantity: \"1\"}, {metric: \"revenue\", quantity: \"1\"}]) { accepted } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&batch), Some("BAD_USER_INPUT"), "{batch}");
    assert_eq!(app.ok(&service, events, json!({})).await, before);
    // What still fits is recorded.
    let fits = app.record(&service, "revenue", "0.4").await;
    assert!(fits.get("errors").is_none(), "{fits}");
    let usage = app
        .ok(
            &service,
            "{ organization { usage { metrics { metric { code } used } } } }",
            json!({}),
        )
        .await;
    let revenue = usage["organization"]["usage"]["metrics"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["metric"]["code"] == "revenue"))
        .cloned();
    assert_eq!(
        revenue.map(|m| m["used"].clone()),
        Some(json!("922337203685477.4807"))
    );
}
both_engines!(no_overflow, super::a_counter_never_overflows);

/// `plans(includeInactive: Boolean = false)` as the contract has it: left out, null or false hide the
/// inactive plans; true lists them too.
async fn plans_list_the_active_ones_unless_asked(app: TestApp) {
    let platform = app.platform_token();
    app.ok(
        &platform,
        "mutation { upsertPlan(input: {code: \"legacy\", name: \"Legacy\", rank: 9, priceMonthly: \"5\", active: false, limits: []}) { code } }",
        json!({}),
    )
    .await;
    let org = app.create_org("acme", "basic").await;
    let viewer = app.tenant_token(&org, Role::Viewer);
    let codes = |v: &Value| -> Vec<String> {
        v["plans"]
            .as_array()
            .expect("plans")
            .iter()
            .map(|p| p["code"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let q = "query($i: Boolean) { plans(includeInactive: $i) { code } }";
    for hidden in [json!({}), json!({ "i": null }), json!({ "i": false })] {
        let listed = codes(&app.ok(&viewer, q, hidden.clone()).await);
        assert!(
            !listed.contains(&"legacy".to_owned()),
            "{hidden}: {listed:?}"
        );
        assert!(listed.contains(&"basic".to_owned()));
    }
    let literal = codes(
        &app.ok(
            &viewer,
            "{ plans(includeInactive: null) { code } }",
            json!({}),
        )
        .await,
    );
    assert!(!literal.contains(&"legacy".to_owned()));
    let all = codes(&app.ok(&viewer, q, json!({ "i": true })).await);
    assert!(all.contains(&"legacy".to_owned()), "{all:?}");
    // Each plan has its own rank (Basic has 1); saving a plan again keeps its own.
    let clash = app
        .gql(
            &platform,
            "mutation { upsertPlan(input: {code: \"twin\", name: \"Twin\", rank: 1, priceMonthly: \"5\", limits: []}) { code } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&clash), Some("CONFLICT"), "{clash}");
    app.ok(
        &platform,
        "mutation { upsertPlan(input: {code: \"legacy\", name: \"Legacy\", rank: 9, priceMonthly: \"6\", active: false, limits: []}) { code } }",
        json!({}),
    )
    .await;
}
both_engines!(plans_list, super::plans_list_the_active_ones_unless_asked);

//! Issue 14's invariants of the fast write path: what a recording costs in statements, group commit
//! keeping every job to itself, and writers that lock organizations in one order.

use serde_json::json;
use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::{TestApp, code};

/// What one request costs in statements (every statement the server runs for it: the token's check,
/// the recording and its evaluation; BEGIN and COMMIT are transaction control, not counted).
async fn cost(
    app: &TestApp,
    token: &str,
    query: &str,
    variables: serde_json::Value,
) -> (u64, serde_json::Value) {
    let before = app.state.statements.get();
    let body = app.gql(token, query, variables).await;
    (app.state.statements.get() - before, body)
}

const RECORD: &str = "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { accepted duplicate usage { used } alerts { kind } } }";

/// A recording costs a pinned number of statements on each engine: in steady state one read and the
/// writes (Postgres fuses the counter and the ledger into one statement and the scope with the
/// lock), at most 6 when it also changes the flags and raises an alert, or is the period's first.
async fn a_recording_costs_a_pinned_number_of_statements(app: TestApp) {
    let org = app.create_org("stmts", "growth").await;
    let service = app.tenant_token(&org, Role::Service);
    let rec = |metric: &str, qty: &str, key: Option<&str>| json!({ "i": { "metric": metric, "quantity": qty, "idempotencyKey": key } });

    // The metric catalogue is read once per process, by whatever needs it first.
    app.ok(&service, "{ metrics { code } }", json!({})).await;
    // The period's first recording creates the period row from every metric's state.
    let (first, body) = cost(&app, &service, RECORD, rec("bookings", "1", None)).await;
    assert_eq!(body["data"]["recordUsage"]["accepted"], true, "{body}");
    assert!(
        first <= 6,
        "the period's first recording cost {first} statements"
    );

    // Steady state: the same cost every time, with or without a key.
    // The read and the writes (two on either engine): the token is checked without the database.
    app.until_team_read().await;
    let steady = 3;
    for i in 0..5 {
        let key = format!("k-{i}");
        let (n, body) = cost(&app, &service, RECORD, rec("bookings", "1", Some(&key))).await;
        assert_eq!(body["data"]["recordUsage"]["accepted"], true, "{body}");
        assert_eq!(n, steady, "a recording cost {n} statements");
    }
    // A replay reads the first event: nothing is written.
    let (n, body) = cost(&app, &service, RECORD, rec("bookings", "1", Some("k-0"))).await;
    assert_eq!(body["data"]["recordUsage"]["duplicate"], true, "{body}");
    assert!(n <= steady + 2, "a replay cost {n} statements");

    // Crossing 80% raises NEAR_LIMIT: the alert's insert (with its NOTIFY on Postgres) is one more.
    let (n, body) = cost(&app, &service, RECORD, rec("bookings", "800", None)).await;
    assert_eq!(
        body["data"]["recordUsage"]["alerts"][0]["kind"], "NEAR_LIMIT",
        "{body}"
    );
    assert_eq!(
        n,
        steady + 1,
        "a recording with an alert cost {n} statements"
    );
    // Going past the allowance changes the flags and raises two alerts at once: at most 6.
    let (n, body) = cost(&app, &service, RECORD, rec("bookings", "300", None)).await;
    assert_eq!(
        body["data"]["recordUsage"]["alerts"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{body}"
    );
    assert!(
        n <= 6,
        "a recording that changed the flags cost {n} statements"
    );
    assert_eq!(n, steady + 2);
    // Past it, each recording changes the flags' `actual`: one write more, and no alert again.
    let (n, body) = cost(&app, &service, RECORD, rec("bookings", "1", None)).await;
    assert_eq!(body["data"]["recordUsage"]["alerts"], json!([]), "{body}");
    assert_eq!(n, steady + 1);

    // A HARD refusal writes nothing.
    let (n, body) = cost(&app, &service, RECORD, rec("venues", "9", None)).await;
    assert_eq!(body["data"]["recordUsage"]["accepted"], false, "{body}");
    assert!(n <= steady, "a refusal cost {n} statements");

    // The flags on the period row are the seed's, as a full evaluation writes them.
    let platform = app.platform_token();
    let data = app
        .ok(
            &platform,
            "query($id: ID!) { organization(id: $id) { usage { hasExceededLimits exceededLimitsDetails } } }",
            json!({ "id": org }),
        )
        .await;
    assert_eq!(
        data["organization"]["usage"]["hasExceededLimits"], true,
        "{data}"
    );
    assert_eq!(
        data["organization"]["usage"]["exceededLimitsDetails"],
        json!({ "bookings": { "limit": 1000, "actual": 1107, "exceeded_by": 107 } })
    );
}
both_engines!(
    statements_per_recording,
    super::a_recording_costs_a_pinned_number_of_statements
);

/// Concurrent jobs share transactions, but one job's failure touches no other: a batch with an
/// unknown organization fails alone while recordings around it commit, exactly.
async fn a_failing_job_leaves_its_group_alone(app: TestApp) {
    let platform = app.platform_token();
    let org = app.create_org("group", "enterprise").await;
    let service = app.tenant_token(&org, Role::Service);
    let batch =
        "mutation($items: [RecordUsageInput!]!) { recordUsageBatch(inputs: $items) { accepted } }";
    let mut tasks = Vec::new();
    for i in 0..60 {
        let app_client = app.client.clone();
        let url = format!("http://{}/graphql", app.addr);
        let (token, query, vars) = if i % 10 == 0 {
            (
                platform.clone(),
                batch,
                json!({ "items": [
                    { "organizationId": org, "metric": "bookings", "quantity": "1000" },
                    { "organizationId": uuid::Uuid::new_v4().to_string(), "metric": "bookings", "quantity": "1" }
                ] }),
            )
        } else {
            (
                service.clone(),
                RECORD,
                json!({ "i": { "metric": "bookings", "quantity": "1", "idempotencyKey": format!("g-{i}") } }),
            )
        };
        tasks.push(tokio::spawn(async move {
            let resp = app_client
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "query": query, "variables": vars }))
                .send()
                .await
                .unwrap();
            resp.json::<serde_json::Value>().await.unwrap()
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let body = t.await.unwrap();
        if i % 10 == 0 {
            assert_eq!(code(&body), Some("NOT_FOUND"), "{body}");
        } else {
            assert_eq!(body["data"]["recordUsage"]["accepted"], true, "{body}");
        }
    }
    let data = app
        .ok(
            &service,
            "{ organization { usage { metrics { metric { code } used } } } }",
            json!({}),
        )
        .await;
    let bookings = data["organization"]["usage"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"]["code"] == "bookings")
        .unwrap()
        .clone();
    // 54 single recordings; none of the six failed batches' 1000s.
    assert_eq!(bookings["used"], "54", "{data}");
}
both_engines!(failing_job, super::a_failing_job_leaves_its_group_alone);

/// A request with a valid token runs no statement before its resolvers: `{ __typename }` costs
/// nothing, for a tenant and for a platform-team member (the team is a snapshot in memory).
async fn the_framework_path_runs_no_statement(app: TestApp) {
    app.until_team_read().await;
    let org = app.create_org("ceiling", "basic").await;
    for token in [app.tenant_token(&org, Role::Viewer), app.platform_token()] {
        let (n, body) = cost(&app, &token, "{ __typename }", json!({})).await;
        assert_eq!(body["data"]["__typename"], "Query", "{body}");
        assert_eq!(n, 0, "{{ __typename }} cost {n} statements");
    }
}
both_engines!(
    no_statement_on_the_way,
    super::the_framework_path_runs_no_statement
);

/// A change of the platform team made by another process (the CLI) reaches the server: at once on
/// Postgres (NOTIFY), within the refresh on SQLite; a removed member loses the platform's view.
async fn the_team_follows_the_cli(app: TestApp) {
    app.until_team_read().await;
    let token = app.token("ops-newcomer", None, None);
    let q = "{ viewer { isPlatformTeam } }";
    assert_eq!(
        code(&app.gql(&token, q, json!({})).await),
        Some("UNAUTHENTICATED")
    );
    let (ok, out) =
        crate::helpers::tollgate_cli(&app.database_url, &["platform-team", "add", "ops-newcomer"])
            .await;
    assert!(ok, "{out}");
    let within = if app.state.engine.db.is_postgres() {
        std::time::Duration::from_secs(2)
    } else {
        tollgate::app::TEAM_REFRESH + std::time::Duration::from_secs(2)
    };
    let started = std::time::Instant::now();
    loop {
        let body = app.gql(&token, q, json!({})).await;
        if body["data"]["viewer"]["isPlatformTeam"] == true {
            break;
        }
        assert!(
            started.elapsed() < within,
            "the server did not see the new member: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (ok, out) = crate::helpers::tollgate_cli(
        &app.database_url,
        &["platform-team", "remove", "ops-newcomer"],
    )
    .await;
    assert!(ok, "{out}");
    let started = std::time::Instant::now();
    loop {
        let body = app.gql(&token, q, json!({})).await;
        if code(&body) == Some("UNAUTHENTICATED") {
            break;
        }
        assert!(
            started.elapsed() < within,
            "the server kept the removed member: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
both_engines!(team_follows_the_cli, super::the_team_follows_the_cli);

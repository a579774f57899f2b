//! Issue 14's invariants of the fast write path: what a recording costs in statements, group commit
//! keeping every job to itself, and writers that lock organizations in one order.

use chrono::Datelike;
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

/// What a recording costs in steady state (no new flag, no alert): on Postgres the lock with the
/// scope, the read, and one statement that writes; on SQLite the read and one script.
fn steady_recording(app: &TestApp) -> u64 {
    if app.state.engine.db.is_postgres() {
        3
    } else {
        2
    }
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
    // Steady state, the token checked without the database: on Postgres the lock with the scope,
    // the read, and one statement that writes the counter, the ledger, the utilization index and the
    // period row's flags and peak; on SQLite (no writes inside WITH) the read and one script of a
    // statement per table, sent as one. Background work (the team's refresh, the index's materialization) is counted apart.
    app.until_team_read().await;
    let steady = steady_recording(&app);
    for i in 0..5 {
        let key = format!("k-{i}");
        let (n, body) = cost(&app, &service, RECORD, rec("bookings", "1", Some(&key))).await;
        assert_eq!(body["data"]["recordUsage"]["accepted"], true, "{body}");
        assert_eq!(n, steady, "a recording cost {n} statements");
    }
    // A replay reads the first event: nothing is written.
    let (n, body) = cost(&app, &service, RECORD, rec("bookings", "1", Some("k-0"))).await;
    assert_eq!(body["data"]["recordUsage"]["duplicate"], true, "{body}");
    assert!(n <= 4, "a replay cost {n} statements");

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
    // Going past the allowance changes the flags (with the peak, in the same statements) and raises
    // two alerts (one insert).
    let (n, body) = cost(&app, &service, RECORD, rec("bookings", "300", None)).await;
    assert_eq!(
        body["data"]["recordUsage"]["alerts"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "{body}"
    );
    assert_eq!(
        n,
        steady + 1,
        "a recording that changed the flags cost {n} statements"
    );
    assert!(n <= 6);
    // Past it, each recording changes the flags' `actual`, in the same statements, and no alert.
    let (n, body) = cost(&app, &service, RECORD, rec("bookings", "1", None)).await;
    assert_eq!(body["data"]["recordUsage"]["alerts"], json!([]), "{body}");
    assert_eq!(n, steady);

    // A HARD refusal writes nothing.
    let (n, body) = cost(&app, &service, RECORD, rec("venues", "9", None)).await;
    assert_eq!(body["data"]["recordUsage"]["accepted"], false, "{body}");
    assert!(n <= steady, "a refusal cost {n} statements");

    // A batch's run of one metric is one read and multi-row writes: 10 or 100 items cost the same.
    let batch = "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted } }";
    let mut costs = Vec::new();
    for n in [10, 100] {
        let items: Vec<_> = (0..n)
            .map(|_| json!({ "metric": "revenue", "quantity": "1.5" }))
            .collect();
        let (cost, body) = cost(&app, &service, batch, json!({ "i": items })).await;
        assert_eq!(
            body["data"]["recordUsageBatch"].as_array().unwrap().len(),
            n,
            "{body}"
        );
        costs.push(cost);
    }
    assert_eq!(
        costs[0], costs[1],
        "statements for 10 and 100 items: {costs:?}"
    );
    assert!(
        costs[1] <= steady + 1,
        "a batch cost {} statements",
        costs[1]
    );

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

/// On Postgres a group's recordings of many organizations go in waves of three statements: the
/// locks with the group's scope, one read of every view with its taken keys, and one write of the
/// counters, the ledger, the index rows, the period rows' peaks and flags, and the usage changes'
/// NOTIFY. So a batch over 3 organizations and one over 12 cost the same, and so does a wave of
/// organizations past their allowance, whose flags change with every recording. On SQLite one
/// statement reads the wave's views, then each organization's run writes with its own script. On
/// both, every count is exact and a replay is answered from its own organization's ledger.
async fn a_wave_costs_constant_statements(app: TestApp) {
    let platform = app.platform_token();
    let orgs = steady_orgs(&app, &platform, "wave", 12).await;
    let batch = "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted duplicate usage { used } } }";
    let mut costs = Vec::new();
    // Every organization a wave changes is announced (on Postgres by the wave's own statement, heard
    // back through LISTEN; on SQLite after the commit), so subscribers and other replicas hear it.
    let mut events = app.state.engine.bus.subscribe(None);
    for (round, n) in [3usize, 12].into_iter().enumerate() {
        let items: Vec<_> = orgs[..n]
            .iter()
            .map(|org| json!({ "organizationId": org, "metric": "bookings", "quantity": "2", "idempotencyKey": format!("w-{round}") }))
            .collect();
        let (cost, body) = cost(&app, &platform, batch, json!({ "i": items })).await;
        let answers = body["data"]["recordUsageBatch"].as_array().unwrap();
        assert_eq!(answers.len(), n, "{body}");
        for a in answers {
            assert_eq!(a["accepted"], true, "{body}");
            assert_eq!(a["duplicate"], false, "{body}");
            // 1, then 2 in the first round; 1, 2 (first round or not) then 2 more.
            let used = a["usage"]["used"].as_str().unwrap();
            assert!(used == "3" || used == "5", "{body}");
        }
        costs.push(cost);
    }
    if app.state.engine.db.is_postgres() {
        assert_eq!(
            costs[0], costs[1],
            "statements for 3 and 12 organizations: {costs:?}"
        );
        assert_eq!(costs[1], 3, "a wave cost {} statements", costs[1]);
    } else {
        assert_eq!(
            costs,
            vec![1 + 3, 1 + 12],
            "statements for 3 and 12 organizations"
        );
    }
    let mut unheard: std::collections::HashSet<String> = orgs.iter().cloned().collect();
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !unheard.is_empty() {
            if let Ok(tollgate::alerts::BusEvent::UsageChanged(org)) = events.recv().await {
                unheard.remove(&org.0.to_string());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no usage change heard for {unheard:?}"));
    // The same keys again: replays, each answered from its own organization's ledger.
    let items: Vec<_> = orgs
        .iter()
        .map(|org| json!({ "organizationId": org, "metric": "bookings", "quantity": "2", "idempotencyKey": "w-1" }))
        .collect();
    let body = app.gql(&platform, batch, json!({ "i": items })).await;
    let answers = body["data"]["recordUsageBatch"].as_array().unwrap();
    assert!(answers.iter().all(|a| a["duplicate"] == true), "{body}");
    for org in &orgs {
        let expected = if orgs[..3].contains(org) { "5" } else { "3" };
        assert_eq!(bookings_used(&app, &platform, org).await, expected, "{org}");
    }
    // Past the allowance (Growth includes 1,000 bookings), every recording changes its period
    // row's flags (their details carry the actual use): on Postgres they go in the wave's write, so
    // the wave still costs three statements.
    let over = |quantity: &str| {
        let items: Vec<_> = orgs
            .iter()
            .map(|org| json!({ "organizationId": org, "metric": "bookings", "quantity": quantity }))
            .collect();
        json!({ "i": items })
    };
    // Crossing raises alerts (one more statement); the round after it raises none.
    app.ok(&platform, batch, over("1000")).await;
    let (cost, body) = cost(&app, &platform, batch, over("2")).await;
    let answers = body["data"]["recordUsageBatch"].as_array().unwrap();
    assert!(answers.iter().all(|a| a["accepted"] == true), "{body}");
    if app.state.engine.db.is_postgres() {
        assert_eq!(cost, 3, "a wave past the allowance cost {cost} statements");
    } else {
        assert_eq!(
            cost,
            1 + 12,
            "a run past the allowance cost more than its script"
        );
    }
    for org in &orgs {
        let expected = if orgs[..3].contains(org) {
            "1007"
        } else {
            "1005"
        };
        assert_eq!(bookings_used(&app, &platform, org).await, expected, "{org}");
    }
}
both_engines!(wave_statements, super::a_wave_costs_constant_statements);

/// `n` organizations on Growth, each with a booking recorded: the period's first recording writes
/// its period row whole, so later ones go in waves.
async fn steady_orgs(app: &TestApp, token: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut orgs = Vec::new();
    for i in 0..n {
        let org = app.create_org(&format!("{prefix}-{i}"), "growth").await;
        let item = json!({ "i": { "organizationId": org, "metric": "bookings", "quantity": "1" } });
        app.ok(token, RECORD, item).await;
        orgs.push(org);
    }
    app.until_team_read().await;
    orgs
}

/// An organization's bookings used this period, read through the API.
async fn bookings_used(app: &TestApp, token: &str, org: &str) -> serde_json::Value {
    let data = app
        .ok(
            token,
            "query($id: ID!) { organization(id: $id) { usage { metrics { metric { code } used } } } }",
            json!({ "id": org }),
        )
        .await;
    let metrics = data["organization"]["usage"]["metrics"].as_array().unwrap();
    metrics
        .iter()
        .find(|m| m["metric"]["code"] == "bookings")
        .map(|m| m["used"].clone())
        .unwrap_or_else(|| panic!("no bookings in {data}"))
}

/// On Postgres a wave's lists are padded to a few sizes with rows that match nothing
/// (`store::pad_rows`): waves of 5 and 7 organizations (padded to 6 and 8) write exactly their own
/// counters, events and index rows, and their keys replay as duplicates. SQLite, unpadded, answers
/// the same.
async fn a_padded_wave_writes_only_its_own_rows(app: TestApp) {
    let platform = app.platform_token();
    let orgs = steady_orgs(&app, &platform, "padded", 12).await;
    let batch = "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted duplicate usage { used utilizationPct } } }";
    let (first, second) = orgs.split_at(5);
    let mut utilization = None;
    for (group, key) in [(first, "p-5"), (second, "p-7")] {
        let items: Vec<_> = group
            .iter()
            .map(|org| json!({ "organizationId": org, "metric": "bookings", "quantity": "4", "idempotencyKey": key }))
            .collect();
        for (round, duplicate) in [(0, false), (1, true)] {
            let body = app.gql(&platform, batch, json!({ "i": items })).await;
            let answers = body["data"]["recordUsageBatch"].as_array().unwrap();
            assert_eq!(answers.len(), group.len(), "round {round}: {body}");
            for a in answers {
                assert_eq!(a["accepted"], true, "{body}");
                assert_eq!(a["duplicate"], duplicate, "{body}");
                assert_eq!(a["usage"]["used"], "5", "{body}");
                utilization = Some(a["usage"]["utilizationPct"].clone());
            }
        }
    }
    for org in &orgs {
        assert_eq!(bookings_used(&app, &platform, org).await, "5", "{org}");
    }
    // Every organization is on the platform's page with its own utilization, and no other row.
    let data = app
        .ok(
            &platform,
            "{ usageSummaries(metric: \"bookings\", first: 100) { nodes { organization { name } metric(code: \"bookings\") { utilizationPct } } } }",
            json!({}),
        )
        .await;
    let padded: Vec<&serde_json::Value> = data["usageSummaries"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| {
            n["organization"]["name"]
                .as_str()
                .is_some_and(|name| name.to_lowercase().starts_with("padded-"))
        })
        .collect();
    assert_eq!(padded.len(), 12, "{data}");
    for node in padded {
        assert_eq!(
            Some(&node["metric"]["utilizationPct"]),
            utilization.as_ref(),
            "{data}"
        );
    }
}
both_engines!(padded_wave, super::a_padded_wave_writes_only_its_own_rows);

/// A round of usageUpdated reads the organization's summary in one statement (on Postgres, after
/// the one that sets the round's scope), its plan from the entitlement cache, and its result is
/// what the query answers.
async fn a_usage_update_reads_one_statement(app: TestApp) {
    use crate::ws::{Event, Ws, bearer};
    let org = app.create_org("rounds", "growth").await;
    let service = app.tenant_token(&org, Role::Service);
    let viewer = app.tenant_token(&org, Role::Viewer);
    let selection = "{ periodStart hasExceededLimits exceededLimitsDetails updatedAt \
        plan { code name currency limits { metric { code } included enforcement } } \
        metrics { metric { code } used credits included allowance remaining exceeded exceededBy \
        enforcement overageQuantity overageAmount utilizationPct } }";
    // Past the allowance, with credits: every part of the summary is in play.
    app.record(&service, "bookings", "1").await;
    let platform = app.platform_token();
    app.ok(
        &platform,
        "mutation($o: ID!) { grantCredit(input: {organizationId: $o, metric: \"bookings\", quantity: \"5\", reason: \"test\"}) { used } }",
        json!({ "o": org }),
    )
    .await;
    app.record(&service, "bookings", "1200").await;
    app.until_team_read().await;
    let before = app.state.engine.bus.listeners();
    let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&viewer)).await;
    ws.subscribe(
        "u",
        &format!("subscription {{ usageUpdated {selection} }}"),
        json!({}),
    )
    .await;
    app.until_listening(before + 1).await;

    // Any read of the plan keeps it (for the minute this server's cache is set to trust it).
    app.ok(&viewer, "{ organization { plan { code } } }", json!({}))
        .await;
    let steady = steady_recording(&app);
    let start = app.state.statements.get();
    // Past the allowance already: a steady recording (no new flag, no alert).
    let body = app.record(&service, "bookings", "1").await;
    assert_eq!(body["data"]["recordUsage"]["accepted"], true, "{body}");
    let Some(Event::Msg(m)) = ws.next_within(std::time::Duration::from_secs(5)).await else {
        panic!("no usageUpdated result");
    };
    let round = app.state.statements.get() - start - steady;
    let expected = if app.state.engine.db.is_postgres() {
        2
    } else {
        1
    };
    assert_eq!(
        round, expected,
        "a round of usageUpdated cost {round} statements"
    );
    let query = app
        .ok(
            &viewer,
            &format!("{{ organization {{ usage {selection} }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(
        m["payload"]["data"]["usageUpdated"], query["organization"]["usage"],
        "the subscription and the query disagree"
    );
    assert_eq!(
        m["payload"]["data"]["usageUpdated"]["hasExceededLimits"], true,
        "{m}"
    );
}
both_engines!(
    usage_update_round,
    super::a_usage_update_reads_one_statement,
    &["--entitlement-cache-ttl", "60s"]
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

/// recordUsageBatch decides each item in memory and writes a run of one metric in multi-row
/// statements: its answers, counters, flags, alerts and ledger are exactly those of the same
/// recordings made one by one (replays inside the batch and of the ledger, HARD refusals in the
/// middle of a run, an alert crossed mid-run, another metric, a GAUGE, another period).
async fn a_batch_answers_as_recordings_one_by_one(app: TestApp) {
    let platform = app.platform_token();
    app.upsert_plan(
        "capped",
        "Capped",
        5,
        "1",
        "included: \"10\", enforcement: HARD",
    )
    .await;
    let a = app.create_org("batch-a", "capped").await;
    let b = app.create_org("batch-b", "capped").await;
    let last_month = (chrono::Utc::now().date_naive().with_day(1).unwrap()
        - chrono::Duration::days(1))
    .and_hms_opt(12, 0, 0)
    .unwrap()
    .and_utc()
    .to_rfc3339();
    let items = |org: &str| {
        json!([
            { "organizationId": org, "metric": "bookings", "quantity": "3", "idempotencyKey": "k1" },
            { "organizationId": org, "metric": "bookings", "quantity": "3", "idempotencyKey": "k1" },
            { "organizationId": org, "metric": "bookings", "quantity": "4" },
            { "organizationId": org, "metric": "bookings", "quantity": "5" },
            { "organizationId": org, "metric": "bookings", "quantity": "2", "idempotencyKey": "old" },
            { "organizationId": org, "metric": "revenue", "quantity": "7.25" },
            { "organizationId": org, "metric": "bookings", "quantity": "1" },
            { "organizationId": org, "metric": "bookings", "quantity": "1", "idempotencyKey": "k3" },
            { "organizationId": org, "metric": "venues", "quantity": "2" },
            { "organizationId": org, "metric": "bookings", "quantity": "1", "idempotencyKey": "k2", "occurredAt": last_month },
            { "organizationId": org, "metric": "bookings", "quantity": "1", "idempotencyKey": "k3" },
        ])
    };
    let fields = "accepted duplicate rejectionReason usage { metric { code } used remaining utilizationPct exceeded } alerts { kind metric { code } }";
    for org in [&a, &b] {
        let pre = json!({ "i": { "organizationId": org, "metric": "bookings", "quantity": "2", "idempotencyKey": "old" } });
        app.ok(&platform, RECORD, pre).await;
    }
    let batch = app
        .ok(
            &platform,
            &format!("mutation($i: [RecordUsageInput!]!) {{ recordUsageBatch(inputs: $i) {{ {fields} }} }}"),
            json!({ "i": items(&a) }),
        )
        .await;
    let mut one_by_one = Vec::new();
    for item in items(&b).as_array().unwrap() {
        let data = app
            .ok(
                &platform,
                &format!(
                    "mutation($i: RecordUsageInput!) {{ recordUsage(input: $i) {{ {fields} }} }}"
                ),
                json!({ "i": item }),
            )
            .await;
        one_by_one.push(data["recordUsage"].clone());
    }
    assert_eq!(batch["recordUsageBatch"], json!(one_by_one));
    // The run crossed 80% on its third item and refused its fourth.
    assert_eq!(
        one_by_one[2]["alerts"][0]["kind"], "NEAR_LIMIT",
        "{one_by_one:?}"
    );
    assert_eq!(one_by_one[3]["accepted"], false);
    assert_eq!(one_by_one[1]["duplicate"], true);
    assert_eq!(one_by_one[4]["duplicate"], true);
    // A refused recording leaves its key unused: its repetition is refused again, not a replay.
    assert_eq!(one_by_one[7]["accepted"], false);
    assert_eq!(one_by_one[10]["accepted"], false);
    assert_eq!(one_by_one[10]["duplicate"], false);

    let state = "query($id: ID!) { organization(id: $id) { usage { hasExceededLimits exceededLimitsDetails \
                 metrics { metric { code } used } } \
                 usageEvents(first: 50) { nodes { metric { code } quantity idempotencyKey } } } \
                 usageAlerts(organizationId: $id) { nodes { kind metric { code } used } } }";
    let sa = app.ok(&platform, state, json!({ "id": a })).await;
    let sb = app.ok(&platform, state, json!({ "id": b })).await;
    assert_eq!(sa["organization"]["usage"], sb["organization"]["usage"]);
    let mut ea = sa["organization"]["usageEvents"]["nodes"]
        .as_array()
        .unwrap()
        .clone();
    let mut eb = sb["organization"]["usageEvents"]["nodes"]
        .as_array()
        .unwrap()
        .clone();
    ea.sort_by_key(|e| e.to_string());
    eb.sort_by_key(|e| e.to_string());
    assert_eq!(ea, eb);
    assert_eq!(sa["usageAlerts"], sb["usageAlerts"]);

    // A key reused for another recording fails the whole batch, which writes nothing.
    let bad = json!([
        { "organizationId": a, "metric": "revenue", "quantity": "1" },
        { "organizationId": a, "metric": "bookings", "quantity": "9", "idempotencyKey": "k1" },
    ]);
    let body = app
        .gql(
            &platform,
            "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted } }",
            json!({ "i": bad }),
        )
        .await;
    assert_eq!(code(&body), Some("CONFLICT"), "{body}");
    let after = app.ok(&platform, state, json!({ "id": a })).await;
    assert_eq!(after["organization"]["usage"], sa["organization"]["usage"]);
    let (ok, out) =
        crate::helpers::tollgate_cli(&app.database_url, &["recompute", "--check"]).await;
    assert!(ok, "{out}");
}
both_engines!(
    batch_as_one_by_one,
    super::a_batch_answers_as_recordings_one_by_one
);

/// Writers lock organizations in one global order: batches over the same organizations in opposite
/// orders, reversals and plan changes racing with them all finish, none with an error (on Postgres a
/// deadlock would fail one of them), and the counters equal the ledger afterwards.
async fn racing_writers_never_deadlock(app: TestApp) {
    let platform = app.platform_token();
    let mut orgs = Vec::new();
    for i in 0..6 {
        orgs.push(app.create_org(&format!("race-{i}"), "growth").await);
    }
    let batch = "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted } }";
    let reverse =
        "mutation($i: ReverseUsageInput!) { reverseUsage(input: $i) { reversedEvents { id } } }";
    let change = "mutation($i: ChangePlanInput!) { changePlan(input: $i) { organization { id } } }";
    let mut tasks = Vec::new();
    for task in 0..6 {
        let (app_client, url, platform, orgs) = (
            app.client.clone(),
            format!("http://{}/graphql", app.addr),
            platform.clone(),
            orgs.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            for round in 0..15 {
                let mut order = orgs.clone();
                if task % 2 == 1 {
                    order.reverse();
                }
                let (query, vars) = match task {
                    0 | 1 => {
                        let items: Vec<_> = order
                            .iter()
                            .flat_map(|o| {
                                [
                                    json!({ "organizationId": o, "metric": "bookings", "quantity": "1", "reference": format!("r-{task}-{round}") }),
                                    json!({ "organizationId": o, "metric": "revenue", "quantity": "2" }),
                                ]
                            })
                            .collect();
                        (batch, json!({ "i": items }))
                    }
                    2 | 3 => {
                        let o = &order[round % order.len()];
                        let reference = format!("r-{}-{}", task - 2, round.saturating_sub(1));
                        (reverse, json!({ "i": { "organizationId": o, "reference": reference } }))
                    }
                    _ => {
                        let o = &order[round % order.len()];
                        let plan = if round % 2 == 0 { "basic" } else { "growth" };
                        (change, json!({ "i": { "organizationId": o, "planCode": plan } }))
                    }
                };
                let body: serde_json::Value = app_client
                    .post(&url)
                    .bearer_auth(&platform)
                    .json(&json!({ "query": query, "variables": vars }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                // Two plan changes may race to the same plan: the second is told so.
                let same_plan = body["errors"][0]["message"] == "the organization is already on this plan";
                if body.get("errors").is_some() && !same_plan {
                    errors.push(body);
                }
            }
            errors
        }));
    }
    for t in tasks {
        let errors = t.await.unwrap();
        assert!(errors.is_empty(), "{errors:?}");
    }
    let (ok, out) =
        crate::helpers::tollgate_cli(&app.database_url, &["recompute", "--check"]).await;
    assert!(ok, "{out}");
}
both_engines!(no_deadlock, super::racing_writers_never_deadlock);

const PAGE: &str = "query Page { usageSummaries(first: 50) { nodes { organization { id slug name } plan { name } metrics { metric { code } used allowance utilizationPct exceeded } } } }";
const SUMMARY: &str = "query Summary { organization { name usage { hasExceededLimits metrics { metric { code } used remaining } } } }";

fn used_of<'a>(page: &'a serde_json::Value, slug: &str) -> Option<&'a serde_json::Value> {
    page["data"]["usageSummaries"]["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["organization"]["slug"] == slug)?["metrics"]
        .as_array()?
        .iter()
        .find(|m| m["metric"]["code"] == "bookings")
        .map(|m| &m["used"])
}

/// The response cache (issue 14: reads at the framework's ceiling) answers a usage read asked again
/// without executing it, and never answers what a write since has changed: a recording in any
/// organization voids the platform's pages, its own organization's summaries and no other's; so do
/// a new organization and a plan's new name. Answers are never shared between callers, and a
/// request that selects anything but usage reads is never kept.
async fn kept_answers_never_hide_a_write(app: TestApp) {
    let a = app.create_org("kept-a", "growth").await;
    let b = app.create_org("kept-b", "growth").await;
    let platform = app.platform_token();
    let (viewer_a, viewer_b) = (
        app.tenant_token(&a, Role::Viewer),
        app.tenant_token(&b, Role::Viewer),
    );
    let service_b = app.tenant_token(&b, Role::Service);
    app.until_team_read().await;

    let (first, page) = cost(&app, &platform, PAGE, json!({})).await;
    assert!(first > 0, "the first page executes");
    let (again, same) = cost(&app, &platform, PAGE, json!({})).await;
    assert_eq!(again, 0, "the same page again is the kept answer");
    assert_eq!(page, same);
    assert_eq!(used_of(&page, "kept-b"), Some(&json!("0")), "{page}");

    // A tenant's summary is kept for that tenant only: the same text answers each its own.
    let sum_a = app.ok(&viewer_a, SUMMARY, json!({})).await;
    let sum_b = app.ok(&viewer_b, SUMMARY, json!({})).await;
    assert_eq!(sum_a["organization"]["name"], "KEPT-A");
    assert_eq!(sum_b["organization"]["name"], "KEPT-B");
    // This server's cache alone: the process-wide metric also counts the twin test's server.
    let hits = || app.state.responses.hits();
    let before = hits();
    assert_eq!(app.ok(&viewer_a, SUMMARY, json!({})).await, sum_a);
    assert_eq!(hits(), before + 1, "A's summary again is kept");

    // A recording in B: the platform's page and B's summary show it at once; A's stays kept.
    let rec = app.record(&service_b, "bookings", "7").await;
    assert_eq!(rec["data"]["recordUsage"]["accepted"], true, "{rec}");
    let page = app.gql(&platform, PAGE, json!({})).await;
    assert_eq!(used_of(&page, "kept-b"), Some(&json!("7")), "{page}");
    let sum_b = app.ok(&viewer_b, SUMMARY, json!({})).await;
    let bookings = sum_b["organization"]["usage"]["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"]["code"] == "bookings")
        .unwrap();
    assert_eq!(bookings["used"], "7", "{sum_b}");
    let before = hits();
    assert_eq!(app.ok(&viewer_a, SUMMARY, json!({})).await, sum_a);
    assert_eq!(hits(), before + 1, "B's recording leaves A's summary kept");

    // A new organization, and a plan's new name, reach the kept page.
    app.gql(&platform, PAGE, json!({})).await;
    app.create_org("kept-c", "growth").await;
    let page = app.gql(&platform, PAGE, json!({})).await;
    assert_eq!(used_of(&page, "kept-c"), Some(&json!("0")), "{page}");
    app.upsert_plan(
        "growth",
        "Growth Renamed",
        2,
        "299",
        "included: \"1000\", enforcement: OVERAGE, overageUnitPrice: \"0.5\"",
    )
    .await;
    let page = app.gql(&platform, PAGE, json!({})).await;
    let nodes = page["data"]["usageSummaries"]["nodes"].as_array().unwrap();
    assert!(
        nodes.iter().all(|n| n["plan"]["name"] == "Growth Renamed"),
        "{page}"
    );

    // Anything but usage reads executes every time (here the ledger, read from the database).
    let events = "{ organization { usageEvents(first: 1) { nodes { quantity } } usage { metrics { used } } } }";
    app.ok(&viewer_b, events, json!({})).await;
    let (n, _) = cost(&app, &viewer_b, events, json!({})).await;
    assert!(n > 0, "a request with the ledger in it is not kept");
    // A mutation never is.
    let (n, _) = cost(
        &app,
        &service_b,
        RECORD,
        json!({ "i": { "metric": "bookings", "quantity": "1" } }),
    )
    .await;
    assert!(n > 0);
}
both_engines!(kept_answers, super::kept_answers_never_hide_a_write);

/// Concurrent requests for an answer that is not kept share one execution: one leads, the others
/// wait for it and are answered with what it kept. The kept page expiring (each time to live) thus
/// costs one execution, not one for each client asking at that moment. After a write, the burst
/// again costs one execution and every answer shows the write.
async fn concurrent_misses_share_one_execution(app: TestApp) {
    let org = app.create_org("burst", "growth").await;
    app.create_org("burst-2", "growth").await;
    let platform = app.platform_token();
    let service = app.tenant_token(&org, Role::Service);
    app.until_team_read().await;
    let hits = || app.state.responses.hits();
    let burst = async |expect_used: &str| {
        let before = hits();
        let answers =
            futures_util::future::join_all((0..16).map(|_| app.gql(&platform, PAGE, json!({}))))
                .await;
        for a in &answers {
            assert_eq!(a, &answers[0], "every client gets the same page");
            assert_eq!(used_of(a, "burst"), Some(&json!(expect_used)), "{a}");
        }
        assert_eq!(hits() - before, 15, "16 clients, one execution");
    };
    burst("0").await;
    // The recording's own event (on Postgres, its notification coming back to this replica, which
    // invalidates again) is awaited, so that no invalidation lands during the next burst.
    let id = tollgate::domain::OrganizationId(org.parse().unwrap());
    let mut events = app.state.engine.bus.subscribe(Some(id));
    let rec = app.record(&service, "bookings", "3").await;
    assert_eq!(rec["data"]["recordUsage"]["accepted"], true, "{rec}");
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while !matches!(
            events.recv().await,
            Ok(tollgate::alerts::BusEvent::UsageChanged(_))
        ) {}
    })
    .await
    .expect("the recording's event");
    burst("3").await;
}
both_engines!(
    shared_misses,
    super::concurrent_misses_share_one_execution,
    &["--entitlement-cache-ttl", "60s"]
);

/// A recording made before the group: metric, quantity, idempotency key.
type Recorded = (&'static str, &'static str, Option<&'static str>);

/// A group's transaction carries recordings of many organizations, each decided from its own view
/// under its organization's lock. Whatever they cover (a plain recording, an alert crossed, the
/// flags and two alerts past the allowance, the flags' details of an organization already past it,
/// a HARD refusal, a replay, a period without its row, a
/// GAUGE whose reading lowers the period's peak, a GAUGE refused without a reading, an unlimited
/// metric, a key), one batch across organizations answers and writes exactly what the same
/// recordings made one by one do: answers, counters, flags, peaks, index rows, alerts, ledger.
async fn a_group_across_organizations_answers_as_one_by_one(app: TestApp) {
    let platform = app.platform_token();
    app.upsert_plan(
        "capped",
        "Capped",
        5,
        "1",
        "included: \"10\", enforcement: HARD",
    )
    .await;
    // (plan, what the organization recorded before, the group's item)
    let cases: Vec<(&str, Vec<Recorded>, serde_json::Value)> = vec![
        (
            "capped",
            vec![("bookings", "7", None)],
            json!({ "metric": "bookings", "quantity": "1" }),
        ),
        (
            "capped",
            vec![("bookings", "7", None)],
            json!({ "metric": "bookings", "quantity": "5" }),
        ),
        (
            "capped",
            vec![("bookings", "2", Some("old"))],
            json!({ "metric": "bookings", "quantity": "2", "idempotencyKey": "old" }),
        ),
        (
            "capped",
            vec![],
            json!({ "metric": "bookings", "quantity": "3" }),
        ),
        (
            "capped",
            vec![("bookings", "1", None)],
            json!({ "metric": "bookings", "quantity": "1", "idempotencyKey": "fresh" }),
        ),
        (
            "growth",
            vec![("bookings", "990", None)],
            json!({ "metric": "bookings", "quantity": "20" }),
        ),
        (
            "growth",
            vec![("bookings", "5", None)],
            json!({ "metric": "revenue", "quantity": "7.25" }),
        ),
        (
            "growth",
            vec![("bookings", "1", None)],
            json!({ "metric": "venues", "quantity": "2" }),
        ),
        (
            "growth",
            vec![("venues", "4", None), ("bookings", "100", None)],
            json!({ "metric": "venues", "quantity": "3" }),
        ),
        (
            "growth",
            vec![("bookings", "1", None)],
            json!({ "metric": "venues", "quantity": "9" }),
        ),
        (
            "growth",
            vec![("bookings", "1100", None)],
            json!({ "metric": "bookings", "quantity": "5" }),
        ),
    ];
    let fields = "accepted duplicate rejectionReason usage { metric { code } used credits remaining utilizationPct exceeded } alerts { kind metric { code } used }";
    let mut twins = Vec::new();
    for (n, (plan, before, _)) in cases.iter().enumerate() {
        let mut pair = Vec::new();
        for side in ["a", "b"] {
            let org = app.create_org(&format!("across-{side}-{n}"), plan).await;
            for (metric, quantity, key) in before {
                let item = json!({ "i": { "organizationId": org, "metric": metric, "quantity": quantity, "idempotencyKey": key } });
                app.ok(&platform, RECORD, item).await;
            }
            pair.push(org);
        }
        twins.push(pair);
    }
    let with_org = |item: &serde_json::Value, org: &str| {
        let mut item = item.clone();
        item["organizationId"] = json!(org);
        item
    };
    let items: Vec<_> = cases
        .iter()
        .zip(&twins)
        .map(|((_, _, item), pair)| with_org(item, &pair[0]))
        .collect();
    let batch = format!(
        "mutation($i: [RecordUsageInput!]!) {{ recordUsageBatch(inputs: $i) {{ {fields} }} }}"
    );
    let together = app.gql(&platform, &batch, json!({ "i": items })).await;
    let mut one_by_one = Vec::new();
    for ((_, _, item), pair) in cases.iter().zip(&twins) {
        let data = app
            .ok(
                &platform,
                &format!(
                    "mutation($i: RecordUsageInput!) {{ recordUsage(input: $i) {{ {fields} }} }}"
                ),
                json!({ "i": with_org(item, &pair[1]) }),
            )
            .await;
        one_by_one.push(data["recordUsage"].clone());
    }
    assert_eq!(
        together["data"]["recordUsageBatch"],
        json!(one_by_one),
        "{together}"
    );
    // What the cases are meant to cover.
    assert_eq!(one_by_one[0]["alerts"][0]["kind"], "NEAR_LIMIT");
    assert_eq!(one_by_one[1]["accepted"], false);
    assert_eq!(one_by_one[2]["duplicate"], true);
    assert_eq!(one_by_one[5]["alerts"].as_array().unwrap().len(), 2);
    assert_eq!(one_by_one[9]["accepted"], false);
    // Already over its allowance: no alert, but the flags' details move with the use.
    assert_eq!(one_by_one[10]["usage"]["exceeded"], true);
    assert_eq!(one_by_one[10]["alerts"], json!([]));

    // What each organization stored: the period row (flags, peak), the index, counters, ledger,
    // alerts.
    let stored = |org: &str| {
        let org = uuid::Uuid::parse_str(org).unwrap();
        let db = app.state.engine.db.clone();
        async move {
            let mut out = Vec::new();
            for (table, columns) in [
                (
                    "organization_usage",
                    "has_exceeded_limits, exceeded_limits_details, peak_utilization_pct, alert_epoch",
                ),
                (
                    "usage_utilization",
                    "metric_code, utilization_pct, exceeded",
                ),
                ("usage_counters", "metric_code, used, credits"),
                (
                    "usage_events",
                    "metric_code, kind, quantity, idempotency_key",
                ),
                (
                    "usage_alerts",
                    "metric_code, kind, alert_epoch, used, allowance, utilization_pct",
                ),
            ] {
                let columns: Vec<&str> = columns.split(", ").collect();
                let select: Vec<String> = columns
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("CAST({c} AS TEXT) AS c{i}"))
                    .collect();
                let sql = format!(
                    "SELECT {} FROM {table} WHERE organization_id = $1",
                    select.join(", ")
                );
                let mut rows: Vec<String> = tollgate::store::query_all(&db, &sql, vec![org.into()])
                    .await
                    .expect("read")
                    .iter()
                    .map(|r| {
                        (0..columns.len())
                            .map(|i| {
                                format!(
                                    "{:?}",
                                    r.try_get::<Option<String>>("", &format!("c{i}")).unwrap()
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(" | ")
                    })
                    .collect();
                rows.sort();
                out.push((table, rows));
            }
            out
        }
    };
    for (n, pair) in twins.iter().enumerate() {
        let (a, b) = (stored(&pair[0]).await, stored(&pair[1]).await);
        assert_eq!(a, b, "case {n}");
    }
    let state = "query($id: ID!) { organization(id: $id) { usage { hasExceededLimits exceededLimitsDetails \
                 metrics { metric { code } used credits utilizationPct } } } }";
    for pair in &twins {
        let sa = app.ok(&platform, state, json!({ "id": pair[0] })).await;
        let sb = app.ok(&platform, state, json!({ "id": pair[1] })).await;
        assert_eq!(sa, sb);
    }
}
both_engines!(
    across_organizations,
    super::a_group_across_organizations_answers_as_one_by_one
);

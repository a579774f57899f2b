//! The edges a real deployment meets, each a regression test of something that broke when tried
//! from outside: documents that would cost exponential time, a WebSocket client that stops reading,
//! dates at chrono's limits, a batch that half-committed, leaks of platform-only names, bare 413
//! and 431 answers, CORS, and rate limits.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::{TestApp, code, tollgate_cli};
use crate::ws::{Ws, bearer};

/// The attacker's document: each fragment spreads the next one twice.
fn doubling(depth: usize) -> String {
    let mut q = String::from("{ ...F0 }");
    for i in 0..depth {
        q.push_str(&format!(
            " fragment F{i} on Query {{ ...F{} ...F{} }}",
            i + 1,
            i + 1
        ));
    }
    q.push_str(&format!(" fragment F{depth} on Query {{ __typename }}"));
    q
}

async fn documents_are_bounded_before_any_walk(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let admin = app.tenant_token(&org, Role::Admin);
    for (token, depth) in [(None, 24), (None, 30), (Some(admin.as_str()), 30)] {
        let started = Instant::now();
        let (status, body) = app.post(token, &doubling(depth), json!({})).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
        assert!(body.get("data").is_none(), "{body}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "depth {depth} took {:?}",
            started.elapsed()
        );
    }
    // Over a WebSocket too: refused as an `error`, the socket stays.
    let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&admin)).await;
    ws.subscribe("f", &doubling(30), json!({})).await;
    let m = ws.message().await;
    assert_eq!(m["type"], "error", "{m}");
    ws.subscribe("v", "{ viewer { role } }", json!({})).await;
    assert_eq!(
        ws.message().await["payload"]["data"]["viewer"]["role"],
        "ADMIN"
    );

    // Tokens are counted before parsing; aliases and directives as written.
    let many = format!("{{ {} }}", "__typename ".repeat(3000));
    let (status, body) = app.post(Some(&admin), &many, json!({})).await;
    assert_eq!(
        (status, code(&body)),
        (400, Some("BAD_USER_INPUT")),
        "{body}"
    );
    assert!(body.to_string().contains("tokens"), "{body}");
    let aliases: String = (0..31).map(|i| format!("a{i}: __typename ")).collect();
    let (_, body) = app
        .post(Some(&admin), &format!("{{ {aliases} }}"), json!({}))
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    // The playground's introspection still works without a token.
    let introspection = include_str!("../fixtures/introspection.graphql");
    let (status, body) = app.post(None, introspection, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["data"]["__schema"]["types"]
            .as_array()
            .is_some_and(|t| t.len() > 20)
    );
    // Anonymous callers get nothing else.
    let (status, body) = app.post(None, "{ organization { name } }", json!({})).await;
    assert_eq!(
        (status, code(&body)),
        (401, Some("UNAUTHENTICATED")),
        "{body}"
    );
}
both_engines!(documents, super::documents_are_bounded_before_any_walk);

/// A POST of a raw body with a token, for the status and headers a helper would hide.
async fn raw_post(app: &TestApp, token: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
    app.client
        .post(app.url("/graphql"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request")
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// Records as fast as it can for `how_long` with `workers` concurrent loops; answers latencies.
async fn record_for(
    app: &TestApp,
    token: &str,
    how_long: Duration,
    workers: usize,
) -> Vec<Duration> {
    let until = Instant::now() + how_long;
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (client, url, token) = (app.client.clone(), app.url("/graphql"), token.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < until {
                let started = Instant::now();
                let (_, body) = crate::helpers::post_graphql(
                    &client,
                    &url,
                    Some(&token),
                    "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"1\"}) { accepted } }",
                    json!({}),
                )
                .await
                .expect("request");
                assert_eq!(body["data"]["recordUsage"]["accepted"], true, "{body}");
                lat.push(started.elapsed());
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("worker"));
    }
    all
}

/// The reported attack: one socket with a small receive buffer sends 300 pairs of a heavy query and
/// a recordUsage in one burst, then never reads. Another organization's HTTP recordings go on at
/// full rate meanwhile, and the server drops the socket once its buffer stays full.
async fn a_client_that_stops_reading_stalls_nobody(app: TestApp) {
    let attacker = app.create_org("attacker", "growth").await;
    let victim = app.create_org("victim", "growth").await;
    let service = app.tenant_token(&victim, Role::Service);
    let baseline = record_for(&app, &service, Duration::from_secs(2), 4).await;

    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("small buffer");
    let stream = socket.connect(app.addr).await.expect("connect");
    let mut req = format!("ws://{}/graphql", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::client_async(req, stream)
        .await
        .expect("upgrade");
    let init = json!({ "type": "connection_init", "payload": bearer(&app.tenant_token(&attacker, Role::Admin)) });
    ws.send(Message::text(init.to_string())).await.unwrap();
    let ack = ws.next().await.expect("ack").expect("frame");
    assert!(ack.to_string().contains("connection_ack"), "{ack}");
    let heavy: String = (0..20)
        .map(|i| {
            format!(
                "a{i}: organization {{ usageHistory(from: \"2017-01-01\", to: \"2026-12-01\") {{ periodStart metrics {{ used allowance }} }} }} "
            )
        })
        .collect();
    let heavy = format!("{{ {heavy} }}");
    for i in 0..300 {
        let q =
            json!({ "type": "subscribe", "id": format!("q{i}"), "payload": { "query": heavy } });
        let m = json!({ "type": "subscribe", "id": format!("m{i}"), "payload": {
            "query": "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"1\"}) { accepted } }" } });
        ws.feed(Message::text(q.to_string())).await.unwrap();
        ws.feed(Message::text(m.to_string())).await.unwrap();
    }
    // Flushing may itself block once the server stops reading: in the background.
    let flusher = tokio::spawn(async move {
        let _ = ws.flush().await;
        ws // kept open, never read
    });
    let during = record_for(&app, &service, Duration::from_secs(4), 4).await;
    let (base_p99, attack_p99) = (p99(baseline.clone()), p99(during.clone()));
    let worst = during.iter().max().copied().unwrap_or_default();
    eprintln!(
        "recordUsage p99: {base_p99:?} before, {attack_p99:?} during the attack ({} recordings), worst {worst:?}",
        during.len()
    );
    assert!(
        worst < Duration::from_secs(3),
        "a recording waited {worst:?} behind a client that stopped reading"
    );
    assert!(
        attack_p99 < Duration::from_secs(1).max(base_p99 * 20),
        "p99 moved from {base_p99:?} to {attack_p99:?}"
    );
    // The server drops the socket whose outgoing buffer stays full.
    let closed = tokio::time::timeout(Duration::from_secs(30), async {
        while app.state.ws.open() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the non-reading socket is still open");
    drop(flusher);
    // Whatever the attacker's mutations did, counters equal the ledger.
    let (ok, out) = tollgate_cli(&app.database_url, &["recompute", "--check"]).await;
    assert!(ok, "{out}");
}
both_engines!(
    slow_reader,
    super::a_client_that_stops_reading_stalls_nobody,
    &[
        "--max-aliases",
        "20",
        "--max-complexity",
        "100000",
        "--ws-send-timeout",
        "2s"
    ]
);

async fn operations_per_connection_are_capped(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&app.tenant_token(&org, Role::Viewer))).await;
    for i in 0..3 {
        ws.subscribe(
            &format!("s{i}"),
            "subscription { usageUpdated { periodStart } }",
            json!({}),
        )
        .await;
    }
    ws.subscribe(
        "over",
        "subscription { usageUpdated { periodStart } }",
        json!({}),
    )
    .await;
    let m = ws.message().await;
    assert_eq!(
        (m["type"].as_str(), m["id"].as_str()),
        (Some("error"), Some("over")),
        "{m}"
    );
    assert_eq!(m["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{m}");
    // The connection goes on.
    ws.subscribe("q", "{ viewer { role } }", json!({})).await;
    let m = ws.message().await;
    assert_eq!(m["type"], "error", "still at the cap: {m}");
    ws.send(json!({ "type": "complete", "id": "s0" })).await;
    ws.subscribe("q2", "{ viewer { role } }", json!({})).await;
    assert_eq!(
        ws.message().await["payload"]["data"]["viewer"]["role"],
        "VIEWER"
    );
}
both_engines!(
    operation_cap,
    super::operations_per_connection_are_capped,
    &["--ws-max-operations", "3"]
);

async fn dates_are_bounded(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let admin = app.tenant_token(&org, Role::Admin);
    let platform = app.platform_token();
    for (token, query) in [
        (
            &admin,
            "{ organization { usageHistory(to: \"-262143-01-15\") { periodStart } } }",
        ),
        (
            &admin,
            "{ organization { usageHistory(from: \"+262142-12-01\") { periodStart } } }",
        ),
        (
            &admin,
            "{ organization { usage(period: \"+262142-12-31\") { periodEnd } } }",
        ),
        (
            &admin,
            "{ organization { usage(period: \"1969-12-31\") { periodEnd } } }",
        ),
    ] {
        let (status, body) = app.post(Some(token), query, json!({})).await;
        assert_eq!(
            (status, code(&body)),
            (400, Some("BAD_USER_INPUT")),
            "{query}: {body}"
        );
    }
    let reset = format!(
        "mutation {{ resetUsage(input: {{organizationId: \"{org}\", period: \"+262142-12-31\", reason: \"x\"}}) {{ hasExceededLimits }} }}"
    );
    let body = app.gql(&platform, &reset, json!({})).await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    let body = app
        .gql(
            &admin,
            "{ usageAlerts(since: \"+262142-01-01T00:00:00Z\") { nodes { id } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    let credit = format!(
        "mutation {{ grantCredit(input: {{organizationId: \"{org}\", metric: \"bookings\", quantity: \"1\", period: \"-262143-01-01\", reason: \"x\"}}) {{ used }} }}"
    );
    let body = app.gql(&platform, &credit, json!({})).await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    // The edges of the range work, and answer sane periods.
    let data = app
        .ok(
            &admin,
            "{ organization { usage(period: \"9999-12-31\") { periodStart periodEnd } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["organization"]["usage"]["periodEnd"], "9999-12-31");
    let (ok, out) = tollgate_cli(&app.database_url, &["recompute", "--check"]).await;
    assert!(ok, "{out}");
    // Over a WebSocket the refusal is an `error`; the socket and its other operations stay.
    let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&admin)).await;
    ws.subscribe(
        "u",
        "subscription { usageUpdated { periodStart } }",
        json!({}),
    )
    .await;
    ws.subscribe(
        "d",
        "{ organization { usageHistory(to: \"-262143-01-15\") { periodStart } } }",
        json!({}),
    )
    .await;
    assert_eq!(ws.message().await["type"], "error");
    ws.subscribe("v", "{ viewer { role } }", json!({})).await;
    assert_eq!(
        ws.message().await["payload"]["data"]["viewer"]["role"],
        "ADMIN"
    );
}
both_engines!(dates, super::dates_are_bounded);

async fn a_batch_is_atomic(app: TestApp) {
    let a = app.create_org("org-a", "growth").await;
    let g = app.create_org("org-g", "growth").await;
    let platform = app.platform_token();
    let batch = "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted duplicate } }";
    let first = app
        .gql(
            &platform,
            batch,
            json!({ "i": [{ "organizationId": g, "metric": "bookings", "quantity": "1", "idempotencyKey": "k" }] }),
        )
        .await;
    assert_eq!(
        first["data"]["recordUsageBatch"][0]["accepted"], true,
        "{first}"
    );
    let conflicting = json!({ "i": [
        { "organizationId": a, "metric": "bookings", "quantity": "1" },
        { "organizationId": g, "metric": "bookings", "quantity": "2", "idempotencyKey": "k" },
    ] });
    for _ in 0..3 {
        let body = app.gql(&platform, batch, conflicting.clone()).await;
        assert_eq!(code(&body), Some("CONFLICT"), "{body}");
        assert!(body["data"].is_null(), "{body}");
    }
    let used = |org: &str| {
        format!(
            "{{ organization(id: \"{org}\") {{ usage {{ metrics {{ metric {{ code }} used }} }} }} }}"
        )
    };
    let bookings = |data: &Value| {
        data["organization"]["usage"]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"]["code"] == "bookings")
            .map(|m| m["used"].as_str().unwrap().to_owned())
            .unwrap()
    };
    assert_eq!(
        bookings(&app.ok(&platform, &used(&a), json!({})).await),
        "0",
        "nothing of A's item"
    );
    assert_eq!(
        bookings(&app.ok(&platform, &used(&g), json!({})).await),
        "1"
    );
    let (ok, out) = tollgate_cli(&app.database_url, &["recompute", "--check"]).await;
    assert!(ok, "{out}");
}
both_engines!(batch_atomic, super::a_batch_is_atomic);

async fn platform_only_names_are_unknown_to_tenants(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let admin = app.tenant_token(&org, Role::Admin);
    // Each document is sent with a hidden name and with an unknown name of the same length: the
    // whole answers (messages, locations, counts, codes, status) must match but for the name.
    let shapes = [
        "query M($i: NAME) { __typename }",
        "query M($i: [NAME!]) { __typename }",
        "{ viewer { ... on NAME { __typename } } }",
        "query { ...F } fragment F on NAME { __typename }",
    ];
    let unknown_like = |name: &str| format!("Zz{}", "q".repeat(name.len() - 2));
    for hidden in [
        "AdjustUsageInput",
        "GrantCreditInput",
        "ResetUsageInput",
        "CreateOrganizationInput",
        "UpsertPlanInput",
        "PlanChange",
        "OrganizationConnection",
    ] {
        for shape in shapes {
            for token in [Some(admin.as_str()), None] {
                let (s1, b1) = app
                    .post(token, &shape.replace("NAME", hidden), json!({}))
                    .await;
                let other = unknown_like(hidden);
                let (s2, b2) = app
                    .post(token, &shape.replace("NAME", &other), json!({}))
                    .await;
                assert_eq!(
                    (s1, b1.to_string().replace(hidden, &other)),
                    (s2, b2.to_string()),
                    "{hidden} in {shape}"
                );
            }
        }
        // The platform team knows them (the variable is unused: another message).
        let body = app
            .gql(
                &app.platform_token(),
                &format!("query M($i: {hidden}) {{ __typename }}"),
                json!({}),
            )
            .await;
        assert!(!body.to_string().contains("Unknown type"), "{body}");
    }
}
both_engines!(
    hidden_types,
    super::platform_only_names_are_unknown_to_tenants
);

async fn rough_edges(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let admin = app.tenant_token(&org, Role::Admin);
    // An out-of-range page size is refused before anything runs, under a nullable parent too.
    for (q, vars) in [
        (
            "{ organization { usageEvents(first: 100000) { edges { node { id } } } } }",
            json!({}),
        ),
        (
            "query($n: Int) { organization { usageEvents(first: $n) { edges { node { id } } } } }",
            json!({ "n": -1 }),
        ),
    ] {
        let (status, body) = app.post(Some(&admin), q, vars).await;
        assert_eq!(
            (status, code(&body)),
            (400, Some("BAD_USER_INPUT")),
            "{body}"
        );
    }
    // What errors quote is capped.
    let huge = "x".repeat(500_000);
    let (_, body) = app
        .post(
            Some(&admin),
            "mutation($i: RecordUsageInput!) { recordUsage(input: $i) { accepted } }",
            json!({ "i": { "metric": huge, "quantity": "1" } }),
        )
        .await;
    assert_eq!(
        code(&body),
        Some("BAD_USER_INPUT"),
        "{}",
        &body.to_string()[..200]
    );
    assert!(
        body.to_string().len() < 2000,
        "the answer quotes {} bytes",
        body.to_string().len()
    );
    // 431 carries JSON and a code.
    let resp = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .header("x-padding", "y".repeat(20 * 1024))
        .body("{\"query\":\"{ __typename }\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 431);
    let body: Value = resp.json().await.expect("a JSON 431");
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    // A search is bounded.
    let body = app
        .gql(
            &app.platform_token(),
            "query($s: String) { organizations(search: $s) { nodes { id } } }",
            json!({ "s": "x".repeat(50_000) }),
        )
        .await;
    assert_eq!(
        code(&body),
        Some("BAD_USER_INPUT"),
        "{}",
        &body.to_string()[..200]
    );
    // A parse error does not quote a huge line whole.
    let huge = format!("{{ __typename(x: \"{}\" !!) }}", "y".repeat(60_000));
    let (_, body) = app.post(Some(&admin), &huge, json!({})).await;
    assert_eq!(code(&body), Some("BAD_USER_INPUT"));
    assert!(
        body.to_string().len() < 2000,
        "{} bytes",
        body.to_string().len()
    );
    // A document past its byte bound is refused before parsing, whatever pads it.
    let padded = format!("{{ __typename {} }}", " ".repeat(100_000));
    let (status, body) = app.post(None, &padded, json!({})).await;
    assert_eq!(
        (status, code(&body)),
        (400, Some("BAD_USER_INPUT")),
        "{body}"
    );
    // A history is weighed by its periods: thirty decades of history in one request are refused.
    let heavy: String = (0..30)
        .map(|i| format!("a{i}: usageHistory(from: \"2017-01-01\", to: \"2026-12-01\") {{ periodStart metrics {{ used allowance }} }} "))
        .collect();
    let (status, body) = app
        .post(
            Some(&admin),
            &format!("{{ organization {{ {heavy} }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (400, Some("BAD_USER_INPUT")),
        "{body}"
    );
    assert!(body.to_string().contains("complex"), "{body}");
    // Codes follow one rule: dashes inside, like slugs; no whitespace around any of them.
    for slug in [" acme2", "acme2\n"] {
        let body = app
            .gql(
                &app.platform_token(),
                "mutation($s: String!) { createOrganization(input: {name: \"X\", slug: $s, planCode: \"basic\"}) { id } }",
                json!({ "s": slug }),
            )
            .await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{slug:?}: {body}");
    }
    app.upsert_plan(
        "pro-annual",
        "Pro annual",
        40,
        "990",
        "included: \"1000\", enforcement: SOFT",
    )
    .await;
    let body = app
        .gql(
            &app.platform_token(),
            "mutation { createOrganization(input: {name: \"Dash\", slug: \"dash_ok-1\", planCode: \"pro-annual\"}) { plan { code } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        body["data"]["createOrganization"]["plan"]["code"], "pro-annual",
        "{body}"
    );
}
both_engines!(edges, super::rough_edges);

/// A body past the limit is a JSON 413 with a code, whether its length was announced or not.
async fn too_large_bodies_answer_json(app: TestApp) {
    let resp = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(vec![b' '; 8192])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.expect("a JSON 413");
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
    let chunks =
        futures_util::stream::iter((0..4).map(|_| Ok::<_, std::io::Error>(vec![b' '; 2048])));
    let resp = app
        .client
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.expect("a JSON 413");
    assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{body}");
}
both_engines!(
    too_large,
    super::too_large_bodies_answer_json,
    &["--max-body-bytes", "4096"]
);

/// A database failure while checking a token is the server's trouble (503), not the caller's
/// (401); usageUpdated tells its subscriber of a failed round and goes on.
async fn database_failures_are_told_as_such(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let admin = app.tenant_token(&org, Role::Admin);
    let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&admin)).await;
    let before = app.state.engine.bus.listeners();
    ws.subscribe(
        "u",
        "subscription { usageUpdated { metrics { used } } }",
        json!({}),
    )
    .await;
    app.until_listening(before + 1).await;

    app.sql("ALTER TABLE usage_counters RENAME TO usage_counters_away")
        .await;
    let id = tollgate::domain::OrganizationId(uuid::Uuid::parse_str(&org).unwrap());
    app.state
        .engine
        .bus
        .send(tollgate::alerts::BusEvent::UsageChanged(id));
    let m = ws.message().await;
    assert_eq!(m["type"], "next", "{m}");
    assert_eq!(
        m["payload"]["errors"][0]["extensions"]["code"], "INTERNAL",
        "{m}"
    );
    app.sql("ALTER TABLE usage_counters_away RENAME TO usage_counters")
        .await;
    app.state
        .engine
        .bus
        .send(tollgate::alerts::BusEvent::UsageChanged(id));
    let m = ws.message().await;
    assert!(
        m["payload"]["data"]["usageUpdated"]["metrics"].is_array(),
        "the stream went on: {m}"
    );

    // A token is checked against the server's snapshot of the platform team: no statement runs
    // on a request's way to its resolvers, and a table gone away does not stop it.
    app.until_team_read().await;
    app.sql("ALTER TABLE platform_team RENAME TO platform_team_away")
        .await;
    let resp = raw_post(&app, &admin, "{\"query\":\"{ viewer { role } }\"}").await;
    assert_eq!(resp.status(), 200);
    // Before the snapshot's first read, the check asks the database: its failure is a 503.
    app.state.team.send_replace(None);
    let resp = raw_post(&app, &admin, "{\"query\":\"{ viewer { role } }\"}").await;
    assert_eq!(resp.status(), 503);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), Some("INTERNAL"), "{body}");
    app.sql("ALTER TABLE platform_team_away RENAME TO platform_team")
        .await;
}
both_engines!(database_failures, super::database_failures_are_told_as_such);

async fn cors_is_off_by_default(app: TestApp) {
    let resp = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/graphql"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}
both_engines!(cors_default, super::cors_is_off_by_default);

async fn cors_allows_the_configured_origins(app: TestApp) {
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let ok = preflight("https://app.example.com").await.unwrap();
    assert!(ok.status().is_success(), "{}", ok.status());
    let h = ok.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert!(
        h["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    assert!(
        h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    assert_eq!(h["access-control-max-age"], "600");
    let other = preflight("https://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    // Only /graphql answers CORS.
    let health = app
        .client
        .get(app.url("/healthz"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert!(
        health
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    // The WebSocket upgrade checks Origin against the same list.
    // This server's own pages (the dashboard) are always let in.
    let own = format!("http://{}", app.addr);
    for (origin, allowed) in [
        ("https://evil.example", false),
        ("https://app.example.com", true),
        (own.as_str(), true),
    ] {
        let mut req = format!("ws://{}/graphql", app.addr)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        match tokio_tungstenite::connect_async(req).await {
            Ok(_) => assert!(allowed, "{origin} was let in"),
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert!(!allowed, "{origin} was refused");
                assert_eq!(resp.status(), 403);
            }
            Err(e) => panic!("{e}"),
        }
    }
}
/// With CORS on, the limits' JSON answers carry CORS headers too, so a browser app can read them.
async fn limit_answers_are_readable_cross_origin(app: TestApp) {
    let resp = app
        .client
        .post(app.url("/graphql"))
        .header("origin", "https://app.example.com")
        .header("content-type", "application/json")
        .body(vec![b' '; 8192])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
}
both_engines!(
    cors_limits,
    super::limit_answers_are_readable_cross_origin,
    &[
        "--cors-origins",
        "https://app.example.com",
        "--max-body-bytes",
        "4096"
    ]
);

both_engines!(
    cors,
    super::cors_allows_the_configured_origins,
    &[
        "--cors-origins",
        "https://app.example.com,https://admin.example.com"
    ]
);

async fn rate_limits_hold_per_subject_and_class(app: TestApp) {
    let org = app.create_org("acme", "growth").await;
    let admin = app.tenant_token(&org, Role::Admin);
    for _ in 0..5 {
        app.ok(&admin, "{ viewer { role } }", json!({})).await;
    }
    let resp = raw_post(&app, &admin, "{\"query\":\"{ viewer { role } }\"}").await;
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=13).contains(&retry), "{retry}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(code(&body), Some("RATE_LIMITED"), "{body}");
    assert_eq!(body["errors"][0]["extensions"]["retryAfter"], retry);
    // Recordings are another class with their own budget; another person has their own.
    app.record(&admin, "bookings", "1").await;
    let other = app.token("someone-else", Some(&org), Some(Role::Viewer));
    app.ok(&other, "{ viewer { role } }", json!({})).await;
    // SERVICE tokens are unlimited by default.
    let service = app.tenant_token(&org, Role::Service);
    for _ in 0..20 {
        app.ok(&service, "{ viewer { role } }", json!({})).await;
    }
    // A batch counts each operation: the refused ones answer in place.
    let batch = json!([
        { "query": "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"1\"}) { accepted } }" },
        { "query": "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"1\"}) { accepted } }" },
        { "query": "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"1\"}) { accepted } }" },
    ]);
    let fresh = app.token("batcher", Some(&org), Some(Role::Admin));
    let resp = raw_post(&app, &fresh, batch.to_string()).await;
    assert!(resp.headers().get("retry-after").is_some());
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body[0]["data"]["recordUsage"]["accepted"], true, "{body}");
    assert_eq!(body[1]["data"]["recordUsage"]["accepted"], true, "{body}");
    assert_eq!(
        body[2]["errors"][0]["extensions"]["code"], "RATE_LIMITED",
        "{body}"
    );
    // A batch whose every operation is refused: 429.
    let resp = raw_post(&app, &fresh, batch.to_string()).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().get("retry-after").is_some());
    // Each recording counts, aliases and batch items too: three in one operation never fit a
    // budget of two.
    let aliased = app.token("aliaser", Some(&org), Some(Role::Admin));
    let three = "mutation { a: recordUsage(input: {metric: \"bookings\", quantity: \"1\"}) { accepted } \
                 b: recordUsage(input: {metric: \"bookings\", quantity: \"1\"}) { accepted } \
                 c: recordUsage(input: {metric: \"bookings\", quantity: \"1\"}) { accepted } }";
    let (status, body) = app.post(Some(&aliased), three, json!({})).await;
    assert_eq!((status, code(&body)), (429, Some("RATE_LIMITED")), "{body}");
    let items = json!({ "i": [
        { "metric": "bookings", "quantity": "1" },
        { "metric": "bookings", "quantity": "1" },
        { "metric": "bookings", "quantity": "1" },
    ] });
    let batcher = app.token("item-batcher", Some(&org), Some(Role::Admin));
    let (status, body) = app
        .post(
            Some(&batcher),
            "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted } }",
            items,
        )
        .await;
    assert_eq!((status, code(&body)), (429, Some("RATE_LIMITED")), "{body}");
    // Subscriptions count on subscribe.
    let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&admin)).await;
    ws.subscribe(
        "u",
        "subscription { usageUpdated { periodStart } }",
        json!({}),
    )
    .await;
    let m = ws.message().await;
    assert_eq!(m["type"], "error", "{m}");
    assert_eq!(m["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{m}");
}
both_engines!(
    rate_limits,
    super::rate_limits_hold_per_subject_and_class,
    &[
        "--rate-limits",
        "on",
        "--rate-people-query",
        "5/m",
        "--rate-people-record",
        "2/m"
    ]
);

//! Real server processes (the `tollgate` binary): two replicas on one Postgres, LISTEN reconnecting,
//! SIGKILL mid-load then recompute(ledger) == counters with every acknowledged recording present,
//! and SIGTERM finishing in-flight requests and closing WebSockets with 1001.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tollgate::auth::JwtKeys;
use tollgate::config::Settings;
use tollgate::domain::Role;

use crate::helpers::{Engine, PLATFORM_SUB, SECRET, code, database, post_graphql, tollgate_cli};
use crate::ws::{ALERTS, Event, Ws, bearer};

const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// One `tollgate serve` process.
struct Server {
    child: Child,
    addr: SocketAddr,
    stderr: std::path::PathBuf,
}

fn keys() -> JwtKeys {
    let settings = Settings::parse_from_env_and(&["--jwt-secret", SECRET]).unwrap();
    JwtKeys::from_settings(&settings).unwrap()
}

fn token(sub: &str, org: Option<&str>, role: Option<Role>) -> String {
    keys()
        .mint(sub, org, role, Duration::from_secs(3600))
        .unwrap()
}

impl Server {
    async fn start(db: &str, dir: &std::path::Path, name: &str, extra: &[&str]) -> Server {
        let stderr = dir.join(format!("{name}.log"));
        let mut child = Command::new(BIN)
            .args([
                "--database-url",
                db,
                "--bind",
                "127.0.0.1:0",
                "--jwt-secret",
                SECRET,
            ])
            .args(extra)
            .arg("serve")
            .env_remove("TOLLGATE_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn tollgate serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(a) = line.strip_prefix("tollgate listening on http://") {
                    return a.trim().parse::<SocketAddr>().unwrap();
                }
            }
            panic!(
                "the server exited: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        })
        .await
        .expect("the server starts within 60s");
        // Keep draining stdout so the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Server {
            child,
            addr,
            stderr,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/graphql", self.addr)
    }

    async fn gql(&self, token: &str, query: &str, vars: Value) -> Value {
        let client = reqwest::Client::new();
        post_graphql(&client, &self.url(), Some(token), query, vars)
            .await
            .expect("request")
            .1
    }

    /// Receivers of this server's event bus (its `tollgate_bus_listeners` gauge).
    async fn listeners(&self) -> f64 {
        let url = format!("http://{}/metrics", self.addr);
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("tollgate_bus_listeners "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    /// A metric's value from this server's /metrics (0 when absent).
    async fn metric(&self, name: &str) -> f64 {
        let url = format!("http://{}/metrics", self.addr);
        let text = reqwest::get(&url).await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    }

    /// Waits until this server's bus has `n` receivers.
    async fn until_listening(&self, n: f64) {
        let started = std::time::Instant::now();
        loop {
            let listening = self.listeners().await;
            if listening >= n {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{listening} of {n} receivers on {}",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    }
}

/// A fresh database with the platform team's member, and a temp dir for the servers' logs.
async fn prepared(
    engine: Engine,
) -> Option<(String, Option<tempfile::TempDir>, tempfile::TempDir)> {
    let (db, guard) = database(engine)?;
    let (ok, out) = tollgate_cli(&db, &["platform-team", "add", PLATFORM_SUB]).await;
    assert!(ok, "{out}");
    Some((db, guard, tempfile::tempdir().unwrap()))
}

async fn create_org(server: &Server, slug: &str, plan: &str) -> String {
    let body = server
        .gql(
            &token(PLATFORM_SUB, None, None),
            "mutation($i: CreateOrganizationInput!) { createOrganization(input: $i) { id } }",
            json!({ "i": { "name": slug, "slug": slug, "planCode": plan } }),
        )
        .await;
    body["data"]["createOrganization"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{body}"))
        .to_owned()
}

async fn record(server: &Server, org: &str, quantity: &str) {
    let t = token(&format!("svc-{org}"), Some(org), Some(Role::Service));
    let body = server
        .gql(
            &t,
            "mutation($q: Decimal!) { recordUsage(input: {metric: \"bookings\", quantity: $q}) { accepted } }",
            json!({ "q": quantity }),
        )
        .await;
    assert_eq!(body["data"]["recordUsage"]["accepted"], true, "{body}");
}

/// The bookings allowance of the viewer's organization, as one replica answers it.
async fn bookings_allowance(server: &Server, viewer: &str) -> Value {
    let body = server
        .gql(
            viewer,
            "{ organization { usage { metric(code: \"bookings\") { allowance } } } }",
            json!({}),
        )
        .await;
    body["data"]["organization"]["usage"]["metric"]["allowance"].clone()
}

/// The next alert of a subscription: (organization id, kind, alert id).
async fn next_alert(ws: &mut Ws) -> (String, String, String) {
    let m = ws.message().await;
    assert_eq!(m["type"], "next", "{m}");
    let a = &m["payload"]["data"]["usageAlerts"];
    (
        a["organization"]["id"].as_str().unwrap().to_owned(),
        a["kind"].as_str().unwrap().to_owned(),
        a["id"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_alerts_exactly_once() {
    let Some((db, _guard, dir)) = prepared(Engine::Postgres).await else {
        return;
    };
    let a = Server::start(&db, dir.path(), "a", &[]).await;
    // B keeps cached entitlements for an hour unless told of a change: what it answers anew below
    // can only come from the notification.
    let b = Server::start(&db, dir.path(), "b", &["--entitlement-cache-ttl", "1h"]).await;
    let since = chrono::Utc::now();
    let org1 = create_org(&a, "one", "basic").await;
    let (on_a, on_b) = (a.listeners().await, b.listeners().await);

    // A tenant's subscriber on B, the platform's (every organization) on B, and one on A.
    let mut tenant_b = Ws::connect(b.addr, Some("graphql-transport-ws")).await;
    tenant_b
        .init(bearer(&token("viewer", Some(&org1), Some(Role::Viewer))))
        .await;
    tenant_b.subscribe("t", ALERTS, json!({})).await;
    let mut platform_b = Ws::connect(b.addr, Some("graphql-transport-ws")).await;
    platform_b
        .init(bearer(&token(PLATFORM_SUB, None, None)))
        .await;
    platform_b.subscribe("p", ALERTS, json!({})).await;
    let mut tenant_a = Ws::connect(a.addr, Some("graphql-transport-ws")).await;
    tenant_a
        .init(bearer(&token("viewer", Some(&org1), Some(Role::Viewer))))
        .await;
    tenant_a.subscribe("t", ALERTS, json!({})).await;
    b.until_listening(on_b + 2.0).await;
    a.until_listening(on_a + 1.0).await;

    // Raised through A, received on B (and on A), each exactly once.
    record(&a, &org1, "85").await;
    record(&a, &org1, "20").await;
    for ws in [&mut tenant_b, &mut platform_b, &mut tenant_a] {
        let first = next_alert(ws).await;
        let second = next_alert(ws).await;
        assert_eq!(
            (first.1.as_str(), second.1.as_str()),
            ("NEAR_LIMIT", "LIMIT_EXCEEDED")
        );
        assert_eq!(first.0, org1);
        assert_eq!(
            ws.next_within(Duration::from_millis(500)).await,
            None,
            "exactly once"
        );
    }

    // LISTEN's connections drop (every replica's); they reconnect, and the catch-up query covers
    // whatever was committed in between.
    let base = tollgate::store::db::Db::new(
        tollgate::store::connect(&db, 1, Duration::from_secs(30))
            .await
            .unwrap()
            .0,
        Duration::from_secs(30),
    );
    let killed = tollgate::store::query_all(
        base.pool(),
        "SELECT pg_terminate_backend(pid) AS k FROM pg_stat_activity \
         WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
        vec![],
    )
    .await
    .unwrap();
    assert!(killed.len() >= 2, "both replicas' LISTEN connections");
    let org2 = create_org(&a, "two", "basic").await;
    record(&a, &org2, "85").await; // raised while the listeners may be reconnecting
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let org3 = create_org(&a, "three", "basic").await;
    record(&a, &org3, "85").await;
    let mut seen = Vec::new();
    loop {
        let alert = next_alert(&mut platform_b).await;
        let done = alert.0 == org3;
        seen.push(alert);
        if done {
            break;
        }
    }
    let ids: HashSet<&String> = seen.iter().map(|a| &a.2).collect();
    assert_eq!(ids.len(), seen.len(), "no alert twice: {seen:?}");
    let caught_up = b
        .gql(
            &token(PLATFORM_SUB, None, None),
            "query($s: DateTime) { usageAlerts(since: $s, first: 50) { nodes { organization { id } kind } } }",
            json!({ "s": since.to_rfc3339() }),
        )
        .await;
    let orgs: HashSet<&str> = caught_up["data"]["usageAlerts"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["organization"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        orgs,
        HashSet::from([org1.as_str(), org2.as_str(), org3.as_str()])
    );

    // A plan's new limits reach the other replica's cached summaries through the notification (its
    // cache would keep them an hour otherwise).
    let viewer = token("viewer", Some(&org1), Some(Role::Viewer));
    assert_eq!(bookings_allowance(&b, &viewer).await, "100"); // cached on B now
    // The plan is kept on B too, and a usageUpdated subscriber on B shows it: the round that the
    // plan's change wakes there shows the new limits, both the plan's and the summary's.
    let plan_limit = "{ organization { plan { limits { metric { code } included } } } }";
    b.gql(&viewer, plan_limit, json!({})).await;
    let on_b = b.listeners().await;
    let mut updated_b = Ws::connect(b.addr, Some("graphql-transport-ws")).await;
    updated_b.init(bearer(&viewer)).await;
    updated_b
        .subscribe(
            "u",
            "subscription { usageUpdated { plan { limits { metric { code } included } } \
             metric(code: \"bookings\") { included } } }",
            json!({}),
        )
        .await;
    b.until_listening(on_b + 1.0).await;
    let upsert = a
        .gql(
            &token(PLATFORM_SUB, None, None),
            "mutation { upsertPlan(input: {code: \"basic\", name: \"Basic\", rank: 1, priceMonthly: \"49\", \
             limits: [{metric: \"bookings\", included: \"150\", enforcement: SOFT}]}) { code } }",
            json!({}),
        )
        .await;
    assert_eq!(upsert["data"]["upsertPlan"]["code"], "basic", "{upsert}");
    let m = updated_b.message().await;
    assert_eq!(m["type"], "next", "{m}");
    let round = &m["payload"]["data"]["usageUpdated"];
    let plan_bookings = round["plan"]["limits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["metric"]["code"] == "bookings")
        .unwrap();
    assert_eq!(
        (&plan_bookings["included"], &round["metric"]["included"]),
        (&json!("150"), &json!("150")),
        "the round after the plan's change: {round}"
    );
    let changed = std::time::Instant::now();
    loop {
        if bookings_allowance(&b, &viewer).await == "150" {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(20),
            "replica B still serves the old limits"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn kill_9_mid_load(engine: Engine) {
    let Some((db, _guard, dir)) = prepared(engine).await else {
        return;
    };
    let server = Server::start(&db, dir.path(), "before", &[]).await;
    let mut orgs = Vec::new();
    for i in 0..4 {
        orgs.push(create_org(&server, &format!("org-{i}"), "growth").await);
    }
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..16 {
        let org = orgs[c % orgs.len()].clone();
        let url = server.url();
        let acked = acknowledged.clone();
        clients.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let t = token(&format!("svc-{c}"), Some(&org), Some(Role::Service));
            for n in 0.. {
                let key = format!("{c}-{n}");
                let query = if n % 10 == 9 {
                    "mutation($k: String!) { recordUsageBatch(inputs: [{metric: \"bookings\", quantity: \"1\", idempotencyKey: $k}, {metric: \"staff\", quantity: \"2\"}]) { accepted } }"
                } else {
                    "mutation($k: String!) { recordUsage(input: {metric: \"bookings\", quantity: \"0.5\", idempotencyKey: $k}) { accepted } }"
                };
                match post_graphql(&client, &url, Some(&t), query, json!({ "k": key })).await {
                    Ok((200, body)) if body.get("errors").is_none() => {
                        acked.lock().unwrap().push(format!("{org}/{key}"));
                    }
                    // The server died mid-request: unknown whether it committed.
                    _ => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Recordings were group-committed: transactions carried more than one.
    let groups = server
        .metric("tollgate_group_commit_recordings_count")
        .await;
    let recordings = server.metric("tollgate_group_commit_recordings_sum").await;
    assert!(
        groups > 0.0 && recordings > groups,
        "{recordings} recordings in {groups} groups"
    );
    server.signal("-KILL");
    for c in clients {
        c.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() > 50, "load ran: {}", acknowledged.len());

    // Restarted on the same database: counters equal the ledger for every organization...
    let restarted = Server::start(&db, dir.path(), "after", &[]).await;
    let (ok, out) = tollgate_cli(&db, &["recompute", "--check"]).await;
    assert!(ok, "recompute --check after kill -9: {out}");
    // ...and every recording the clients saw acknowledged is there.
    let base = tollgate::store::db::Db::new(
        tollgate::store::connect(&db, 1, Duration::from_secs(30))
            .await
            .unwrap()
            .0,
        Duration::from_secs(30),
    );
    let rows = tollgate::store::query_all(
        &base,
        "SELECT organization_id, idempotency_key FROM usage_events WHERE idempotency_key IS NOT NULL",
        vec![],
    )
    .await
    .unwrap();
    let stored: HashSet<String> = rows
        .iter()
        .map(|r| {
            let org: uuid::Uuid = r.try_get("", "organization_id").unwrap();
            let key: String = r.try_get("", "idempotency_key").unwrap();
            format!("{org}/{key}")
        })
        .collect();
    let missing: Vec<&String> = acknowledged
        .iter()
        .filter(|k| !stored.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged recordings lost: {missing:?}",
        missing.len()
    );
    println!(
        "kill -9 on {engine:?}: {} acknowledged, {} stored, recompute --check clean",
        acknowledged.len(),
        stored.len()
    );
    drop(restarted);
}

crate::per_engine!(kill_9_loses_nothing_acknowledged, super::kill_9_mid_load);

async fn graceful_shutdown(engine: Engine) {
    let Some((db, _guard, dir)) = prepared(engine).await else {
        return;
    };
    let mut server = Server::start(&db, dir.path(), "graceful", &["--log-json"]).await;
    let org = create_org(&server, "acme", "enterprise").await;
    let mut ws = Ws::connect(server.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&token("viewer", Some(&org), Some(Role::Viewer))))
        .await;
    ws.subscribe("t", ALERTS, json!({})).await;

    // A large batch is in flight when SIGTERM arrives: it still completes.
    let items: Vec<Value> = (0..500)
        .map(
            |i| json!({ "metric": "bookings", "quantity": "1", "idempotencyKey": format!("k{i}") }),
        )
        .collect();
    let url = server.url();
    let t = token("svc", Some(&org), Some(Role::Service));
    let in_flight = tokio::spawn(async move {
        post_graphql(
            &reqwest::Client::new(),
            &url,
            Some(&t),
            "mutation($i: [RecordUsageInput!]!) { recordUsageBatch(inputs: $i) { accepted } }",
            json!({ "i": items }),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.signal("-TERM");
    let (status, body) = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(status, 200, "{body}");
    assert!(code(&body).is_none(), "{body}");
    assert_eq!(
        body["data"]["recordUsageBatch"].as_array().unwrap().len(),
        500
    );
    // WebSockets close with 1001 (going away).
    match ws.next().await {
        Event::Closed(code, _) => assert_eq!(code, 1001),
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .expect("the server exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    // Its logs were JSON lines.
    let logs = std::fs::read_to_string(&server.stderr).unwrap();
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        serde_json::from_str::<Value>(l).unwrap_or_else(|_| panic!("not a JSON log line: {l}"));
    }
}

crate::per_engine!(
    sigterm_finishes_requests_and_closes_websockets,
    super::graceful_shutdown
);

/// The Stripe outbox through a crash: the server is killed (-9) after Stripe made the invoice item
/// and before the server recorded it; a restarted server sends the charge again with the same
/// Idempotency-Key, gets Stripe's first answer, and the charge ends SENT, billed once.
async fn an_outbox_crash_bills_once(engine: Engine) {
    use chrono::Datelike;
    use std::sync::atomic::Ordering;
    let Some((db, _guard, dir)) = prepared(engine).await else {
        return;
    };
    let (stripe_url, fake) = crate::stripe::fake_stripe().await;
    let args = [
        "--stripe-secret-key",
        "sk_test_123",
        "--stripe-api-base",
        stripe_url.as_str(),
        "--stripe-webhook-secret",
        crate::stripe::SECRET,
        "--stripe-outbox-interval",
        "1s",
    ];
    let mut before = Server::start(&db, dir.path(), "outbox-before", &args).await;
    let platform = token(PLATFORM_SUB, None, None);
    let body = before
        .gql(
            &platform,
            "mutation { upsertPlan(input: {code: \"metered\", name: \"Metered\", rank: 90, priceMonthly: \"10\", \
             stripePriceId: \"price_metered\", limits: [{metric: \"bookings\", included: \"10\", enforcement: OVERAGE, overageUnitPrice: \"2\"}]}) { code } }",
            json!({}),
        )
        .await;
    assert!(body.get("errors").is_none(), "{body}");
    let org = create_org(&before, "crashy", "metered").await;
    // Its Stripe customer, learnt from a (signed) subscription event.
    let sub = json!({ "id": "sub_k", "object": "subscription", "customer": "cus_k", "status": "active",
        "metadata": { "organization_id": org },
        "items": { "data": [{ "plan": { "id": "price_metered", "amount": 1000, "currency": "usd" } }] } });
    let ev = crate::stripe::event(
        "evt_k",
        "customer.subscription.updated",
        chrono::Utc::now().timestamp(),
        sub,
    );
    let sig = stripe_webhook::Webhook::generate_test_header(
        &ev,
        crate::stripe::SECRET,
        Some(chrono::Utc::now().timestamp()),
    );
    let resp = reqwest::Client::new()
        .post(format!("http://{}/stripe/webhook", before.addr))
        .header("stripe-signature", sig)
        .body(ev)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let last_day = chrono::Utc::now()
        .date_naive()
        .with_day(1)
        .and_then(|d| d.pred_opt())
        .unwrap()
        .and_hms_opt(12, 0, 0)
        .unwrap()
        .and_utc();
    let body = before
        .gql(
            &token("svc", Some(&org), Some(Role::Service)),
            "mutation($t: DateTime) { recordUsage(input: {metric: \"bookings\", quantity: \"15\", occurredAt: $t}) { accepted } }",
            json!({ "t": last_day.to_rfc3339() }),
        )
        .await;
    assert_eq!(body["data"]["recordUsage"]["accepted"], true, "{body}");
    // Stripe makes the item, then its answer is held: the server dies waiting for it.
    fake.hold_ms.store(30_000, Ordering::SeqCst);
    let billed = before
        .gql(
            &platform,
            "mutation { billOverage { id status } }",
            json!({}),
        )
        .await;
    let charge = billed["data"]["billOverage"][0]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{billed}"))
        .to_owned();
    let started = std::time::Instant::now();
    while fake.invoice_items.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the outbox sent nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    before.signal("-KILL");
    let _ = before.child.wait().await;
    fake.hold_ms.store(0, Ordering::SeqCst);
    // A new server on the same database takes the charge once the dead sender's claim expires.
    let after = Server::start(&db, dir.path(), "outbox-after", &args).await;
    let admin = token("admin", Some(&org), Some(Role::Admin));
    let started = std::time::Instant::now();
    loop {
        let data = after
            .gql(
                &admin,
                "{ organization { overageCharges { nodes { id status stripeId } } } }",
                json!({}),
            )
            .await;
        let c = data["data"]["organization"]["overageCharges"]["nodes"][0].clone();
        if c["status"] == "SENT" {
            assert_eq!(c["stripeId"], "ii_1", "{c}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not sent after the crash: {c}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(fake.invoice_items.load(Ordering::SeqCst), 1, "billed once");
    let tries: Vec<Value> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["path"] == "/v1/invoiceitems")
        .cloned()
        .collect();
    assert!(tries.len() >= 2, "{tries:?}");
    for t in &tries {
        assert_eq!(
            t["idempotencyKey"],
            format!("tollgate-overage-{charge}"),
            "{t}"
        );
    }
}
crate::per_engine!(outbox_crash, super::an_outbox_crash_bills_once);

/// A replica that has just started, with a pool of 2 connections, answers a burst of 64 concurrent
/// reads at once: a request holds its read transaction's connection while it resolves, so nothing
/// it resolves may wait for a second connection from the pool (the metric catalogue is read at
/// start, the utilization index's completeness through the request's own transaction). Before,
/// such a burst starved the pool until its acquire timeout.
async fn a_cold_replica_answers_a_burst(engine: Engine) {
    let Some((db, _guard, dir)) = prepared(engine).await else {
        return;
    };
    let first = Server::start(&db, dir.path(), "first", &[]).await;
    let mut viewers = Vec::new();
    for i in 0..16 {
        let org = create_org(&first, &format!("burst-{i}"), "growth").await;
        record(&first, &org, "3").await;
        viewers.push(token("burst-viewer", Some(&org), Some(Role::Viewer)));
    }
    drop(first);
    // No recompute at start (it would read the catalogue before the burst).
    let cold = Server::start(
        &db,
        dir.path(),
        "cold",
        &["--db-max-connections", "2", "--recompute-interval", "0"],
    )
    .await;
    let platform = token(PLATFORM_SUB, None, None);
    let url = cold.url();
    let mut burst = Vec::new();
    // Every client connects first (an empty query touches no database), then all ask at once.
    let start = Arc::new(tokio::sync::Barrier::new(64));
    for i in 0..64 {
        let start = start.clone();
        let (url, token) = (
            url.clone(),
            if i == 0 {
                platform.clone()
            } else {
                viewers[i % viewers.len()].clone()
            },
        );
        burst.push(tokio::spawn(async move {
            let query = if i == 0 {
                "{ usageSummaries(metric: \"bookings\", orderBy: UTILIZATION_DESC, first: 5) { nodes { metrics { used } } } }"
            } else {
                "{ organization { name usage { metrics { metric { code name } used allowance } } } }"
            };
            let client = reqwest::Client::new();
            post_graphql(&client, &url, Some(&token), "{ __typename }", json!({}))
                .await
                .expect("request");
            start.wait().await;
            post_graphql(&client, &url, Some(&token), query, json!({}))
                .await
                .expect("request")
                .1
        }));
    }
    let answers = tokio::time::timeout(Duration::from_secs(20), async {
        let mut out = Vec::new();
        for b in burst {
            out.push(b.await.unwrap());
        }
        out
    })
    .await
    .expect(
        "the burst is answered within 20s (before: the pool starved until its acquire timeout)",
    );
    for a in answers {
        assert!(a.get("errors").is_none(), "{a}");
    }
}
crate::per_engine!(cold_burst, super::a_cold_replica_answers_a_burst);

//! GraphQL over WebSocket through the real server: graphql-transport-ws close codes and keep-alive,
//! the legacy subscriptions-transport-ws, tenant scope, alerts after commit, catch-up, coalescing,
//! identical subscriptions executing once, and what a lagging subscriber is told.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::TestApp;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

#[derive(Debug, PartialEq)]
pub enum Event {
    Msg(Value),
    Closed(u16, String),
}

pub struct Ws {
    socket: Socket,
}

impl Ws {
    pub async fn connect(addr: std::net::SocketAddr, protocol: Option<&str>) -> Ws {
        let mut req = format!("ws://{addr}/graphql")
            .into_client_request()
            .unwrap();
        if let Some(p) = protocol {
            req.headers_mut()
                .insert("sec-websocket-protocol", p.parse().unwrap());
        }
        let (socket, resp) = tokio_tungstenite::connect_async(req)
            .await
            .expect("connect");
        if let Some(p) = protocol {
            assert_eq!(
                resp.headers()
                    .get("sec-websocket-protocol")
                    .and_then(|v| v.to_str().ok()),
                Some(p.split(',').next().unwrap().trim())
            );
        }
        Ws { socket }
    }

    pub async fn send(&mut self, v: Value) {
        self.socket
            .send(Message::text(v.to_string()))
            .await
            .unwrap();
    }

    async fn send_raw(&mut self, text: &str) {
        self.socket.send(Message::text(text)).await.unwrap();
    }

    /// The next message or close within `within`, or None.
    pub async fn next_within(&mut self, within: Duration) -> Option<Event> {
        loop {
            let msg = match tokio::time::timeout(within, self.socket.next()).await {
                Err(_) => return None,
                Ok(None) | Ok(Some(Err(_))) => return Some(Event::Closed(1006, String::new())),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => return Some(Event::Msg(serde_json::from_str(&t).unwrap())),
                Message::Close(frame) => {
                    return Some(match frame {
                        Some(f) => Event::Closed(f.code.into(), f.reason.to_string()),
                        None => Event::Closed(1005, String::new()),
                    });
                }
                _ => continue,
            }
        }
    }

    pub async fn next(&mut self) -> Event {
        self.next_within(Duration::from_secs(10))
            .await
            .expect("a message within 10s")
    }

    /// The next protocol message, skipping keep-alives.
    pub async fn message(&mut self) -> Value {
        loop {
            match self.next().await {
                Event::Msg(m) if m["type"] == "ping" || m["type"] == "ka" => continue,
                Event::Msg(m) => return m,
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    pub async fn closed_with(&mut self) -> u16 {
        loop {
            match self.next().await {
                Event::Closed(code, _) => return code,
                Event::Msg(m) if m["type"] == "ping" || m["type"] == "ka" => continue,
                Event::Msg(m) => panic!("expected a close, got {m}"),
            }
        }
    }

    pub async fn init(&mut self, payload: Value) {
        self.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        assert_eq!(self.message().await["type"], "connection_ack");
    }

    /// The next text frame as it was sent (keys in the server's order), skipping keep-alives.
    pub async fn text(&mut self) -> String {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a message within 10s")
                .expect("open")
                .expect("a frame");
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] != "ping" && v["type"] != "ka" {
                    return t.to_string();
                }
            }
        }
    }

    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        self.send(json!({ "type": "subscribe", "id": id, "payload": { "query": query, "variables": variables } }))
            .await;
    }
}

/// A viewer of `org` subscribed (operation id "u") to `query`, once the subscription listens (it
/// must be the only one of its kind, or it would join an execution already counted).
async fn subscribed_viewer(app: &TestApp, org: &str, query: &str) -> Ws {
    let before = app.state.engine.bus.listeners();
    let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&app.tenant_token(org, Role::Viewer))).await;
    ws.subscribe("u", query, json!({})).await;
    app.until_listening(before + 1).await;
    ws
}

pub fn bearer(token: &str) -> Value {
    json!({ "Authorization": format!("Bearer {token}") })
}

pub const ALERTS: &str = "subscription($o: ID, $since: DateTime) { usageAlerts(organizationId: $o, since: $since) { \
    id kind metric { code } organization { id } utilizationPct } }";

async fn close_codes_follow_the_protocol(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let token = app.tenant_token(&org, Role::Viewer);
    let proto = Some("graphql-transport-ws");

    // No connection_init in time (the server runs with a 1s limit here).
    let mut ws = Ws::connect(app.addr, proto).await;
    let started = Instant::now();
    assert_eq!(ws.closed_with().await, 4408);
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Without a valid token: 4403, whichever way it is wrong.
    for payload in [
        json!({}),
        json!(null),
        bearer("not-a-token"),
        json!({ "token": "x.y.z" }),
    ] {
        let mut ws = Ws::connect(app.addr, proto).await;
        ws.send(json!({ "type": "connection_init", "payload": payload }))
            .await;
        assert_eq!(ws.closed_with().await, 4403, "init payload {payload}");
    }

    // Subscribe before the ack: 4401.
    let mut ws = Ws::connect(app.addr, proto).await;
    ws.subscribe("1", "subscription { usageAlerts { id } }", json!({}))
        .await;
    assert_eq!(ws.closed_with().await, 4401);

    // A second init: 4429. The token may also come as {"token": ...}.
    let mut ws = Ws::connect(app.addr, proto).await;
    ws.init(json!({ "token": token })).await;
    ws.send(json!({ "type": "connection_init", "payload": bearer(&token) }))
        .await;
    assert_eq!(ws.closed_with().await, 4429);

    // A duplicate operation id: 4409.
    let mut ws = Ws::connect(app.addr, proto).await;
    ws.init(bearer(&token)).await;
    ws.subscribe("dup", "subscription { usageAlerts { id } }", json!({}))
        .await;
    ws.subscribe("dup", "subscription { usageAlerts { id } }", json!({}))
        .await;
    assert_eq!(ws.closed_with().await, 4409);

    // Invalid messages: 4400.
    for bad in [
        "not json",
        "{\"type\": \"nonsense\"}",
        "{\"no\": \"type\"}",
        "{\"type\": \"subscribe\", \"payload\": {\"query\": \"{ viewer { userId } }\"}}",
        "{\"type\": \"subscribe\", \"id\": \"1\", \"payload\": {}}",
    ] {
        let mut ws = Ws::connect(app.addr, proto).await;
        ws.init(bearer(&token)).await;
        ws.send_raw(bad).await;
        assert_eq!(ws.closed_with().await, 4400, "{bad}");
    }

    // ping answers pong with its payload; a query runs once and completes.
    let mut ws = Ws::connect(app.addr, proto).await;
    ws.init(bearer(&token)).await;
    ws.send(json!({ "type": "ping", "payload": { "n": 1 } }))
        .await;
    assert_eq!(
        ws.message().await,
        json!({ "type": "pong", "payload": { "n": 1 } })
    );
    ws.subscribe("q", "{ viewer { role organization { id } } }", json!({}))
        .await;
    let next = ws.message().await;
    assert_eq!(next["type"], "next");
    assert_eq!(next["id"], "q");
    assert_eq!(next["payload"]["data"]["viewer"]["role"], "VIEWER");
    assert_eq!(ws.message().await, json!({ "type": "complete", "id": "q" }));
    // A validation error is an `error` message, and ends the operation.
    ws.subscribe("bad", "subscription { noSuchField }", json!({}))
        .await;
    let err = ws.message().await;
    assert_eq!(err["type"], "error");
    assert!(err["payload"][0]["message"].as_str().is_some(), "{err}");
}
both_engines!(
    close_codes,
    super::close_codes_follow_the_protocol,
    &["--ws-init-timeout", "1s"]
);

async fn platform_removal_closes_its_sockets(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let mut platform = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    platform.init(bearer(&app.platform_token())).await;
    platform.subscribe("p", ALERTS, json!({})).await;
    let mut tenant = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    tenant
        .init(bearer(&app.tenant_token(&org, Role::Viewer)))
        .await;
    // Still a member: the connection stays (keep-alive pings only).
    assert!(matches!(
        platform.next_within(Duration::from_millis(2500)).await,
        Some(Event::Msg(m)) if m["type"] == "ping"
    ));
    tollgate::store::team::remove(&app.state.engine.db, crate::helpers::PLATFORM_SUB)
        .await
        .unwrap();
    let removed = Instant::now();
    assert_eq!(platform.closed_with().await, 4403);
    assert!(removed.elapsed() < Duration::from_secs(5));
    // A tenant's connection does not depend on the platform team.
    assert!(matches!(
        tenant.next_within(Duration::from_millis(1500)).await,
        Some(Event::Msg(m)) if m["type"] == "ping"
    ));
}
both_engines!(
    platform_removal,
    super::platform_removal_closes_its_sockets,
    &["--ws-keepalive", "1s"]
);

/// RFC 6455 5.5.1: a close frame from the client is answered with one, echoing its code.
async fn a_client_close_is_answered(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    for protocol in ["graphql-transport-ws", "graphql-ws"] {
        let mut ws = Ws::connect(app.addr, Some(protocol)).await;
        ws.send(json!({ "type": "connection_init", "payload": bearer(&app.tenant_token(&org, Role::Viewer)) }))
            .await;
        assert_eq!(ws.message().await["type"], "connection_ack");
        ws.socket
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: 4000.into(),
                reason: "bye".into(),
            }))
            .await
            .unwrap();
        assert_eq!(ws.closed_with().await, 4000, "{protocol}");
    }
}
both_engines!(client_close, super::a_client_close_is_answered);

async fn keepalive_and_expiry(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    // The server pings an idle connection (here every second), and the client's pong is accepted.
    let token = app.tenant_token(&org, Role::Viewer);
    let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&token)).await;
    match ws.next_within(Duration::from_secs(3)).await {
        Some(Event::Msg(m)) => assert_eq!(m["type"], "ping"),
        other => panic!("expected a keep-alive ping, got {other:?}"),
    }
    ws.send(json!({ "type": "pong" })).await;

    // The socket closes when its token expires.
    let short = app
        .keys
        .mint(
            "short-lived",
            Some(&org),
            Some(Role::Viewer),
            Duration::from_secs(2),
        )
        .unwrap();
    let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&short)).await;
    let started = Instant::now();
    assert_eq!(ws.closed_with().await, 4403);
    assert!(started.elapsed() <= Duration::from_secs(4));
}
both_engines!(
    keepalive,
    super::keepalive_and_expiry,
    &["--ws-keepalive", "1s"]
);

async fn legacy_protocol_works(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let viewer = app.tenant_token(&org, Role::Viewer);
    let service = app.tenant_token(&org, Role::Service);
    let mut ws = Ws::connect(app.addr, Some("graphql-ws")).await;
    ws.send(json!({ "type": "connection_init", "payload": bearer(&viewer) }))
        .await;
    assert_eq!(
        ws.next().await,
        Event::Msg(json!({ "type": "connection_ack" }))
    );
    assert_eq!(ws.next().await, Event::Msg(json!({ "type": "ka" })));
    let before = app.state.engine.bus.listeners();
    ws.send(json!({ "type": "start", "id": "a", "payload": { "query": ALERTS } }))
        .await;
    app.until_listening(before + 1).await;
    app.record(&service, "bookings", "85").await;
    let data = ws.message().await;
    assert_eq!(data["type"], "data", "{data}");
    assert_eq!(data["id"], "a");
    assert_eq!(data["payload"]["data"]["usageAlerts"]["kind"], "NEAR_LIMIT");
    ws.send(json!({ "type": "stop", "id": "a" })).await;
    assert_eq!(ws.message().await, json!({ "type": "complete", "id": "a" }));
    ws.send(json!({ "type": "connection_terminate" })).await;
    assert_eq!(ws.closed_with().await, 1000);

    // A wrong token: connection_error, then the close.
    let mut ws = Ws::connect(app.addr, Some("graphql-ws")).await;
    ws.send(json!({ "type": "connection_init", "payload": { "token": "nope" } }))
        .await;
    assert_eq!(ws.message().await["type"], "connection_error");
    assert_eq!(ws.closed_with().await, 4403);
}
both_engines!(legacy, super::legacy_protocol_works);

async fn alerts_reach_only_their_tenant(app: TestApp) {
    let a = app.create_org("alpha", "basic").await;
    let b = app.create_org("bravo", "basic").await;
    let started_at = chrono::Utc::now();
    let before = app.state.engine.bus.listeners();
    let mut wa = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    wa.init(bearer(&app.tenant_token(&a, Role::Viewer))).await;
    wa.subscribe("a", ALERTS, json!({})).await;
    let mut wb = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    wb.init(bearer(&app.tenant_token(&b, Role::Viewer))).await;
    wb.subscribe("b", ALERTS, json!({})).await;
    let mut wp = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    wp.init(bearer(&app.platform_token())).await;
    wp.subscribe("p", ALERTS, json!({})).await;
    // Subscribing to another tenant's organization fails exactly as a missing one does.
    wb.subscribe("foreign", ALERTS, json!({ "o": a })).await;
    let foreign = wb.message().await;
    wb.subscribe("ghost", ALERTS, json!({ "o": uuid::Uuid::new_v4() }))
        .await;
    let ghost = wb.message().await;
    assert_eq!(foreign["type"], "error", "{foreign}");
    assert_eq!(foreign["payload"], ghost["payload"]);
    assert_eq!(foreign["payload"][0]["extensions"]["code"], "NOT_FOUND");
    // Alpha's viewer, bravo's and the platform's.
    app.until_listening(before + 3).await;

    let service = app.tenant_token(&a, Role::Service);
    let mut latencies = Vec::new();
    for (quantity, kind) in [("85", "NEAR_LIMIT"), ("20", "LIMIT_EXCEEDED")] {
        app.record(&service, "bookings", quantity).await;
        let answered = Instant::now();
        let m = wa.message().await;
        latencies.push(answered.elapsed());
        assert_eq!(m["type"], "next");
        let alert = &m["payload"]["data"]["usageAlerts"];
        assert_eq!(alert["kind"], kind, "{m}");
        assert_eq!(alert["organization"]["id"], a.as_str());
        let p = wp.message().await;
        assert_eq!(p["payload"]["data"]["usageAlerts"]["kind"], kind);
    }
    println!("alert delivery after the mutation answered: {latencies:?}");
    assert_eq!(
        wb.next_within(Duration::from_millis(500)).await,
        None,
        "the other tenant hears nothing"
    );

    // Reconnecting with `since` replays what was stored, then continues live without repeats.
    let mut again = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    again
        .init(bearer(&app.tenant_token(&a, Role::Viewer)))
        .await;
    again
        .subscribe("r", ALERTS, json!({ "since": started_at.to_rfc3339() }))
        .await;
    let kinds: Vec<Value> = [again.message().await, again.message().await]
        .iter()
        .map(|m| m["payload"]["data"]["usageAlerts"]["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("NEAR_LIMIT"), json!("LIMIT_EXCEEDED")]);
    // The same alerts are there for the catch-up query.
    let d = app
        .ok(
            &service,
            "query($s: DateTime) { usageAlerts(since: $s) { nodes { kind } } }",
            json!({ "s": started_at.to_rfc3339() }),
        )
        .await;
    assert_eq!(d["usageAlerts"]["nodes"].as_array().unwrap().len(), 2);
}
both_engines!(alerts, super::alerts_reach_only_their_tenant);

/// Waits until the server runs `n` shared subscription executions.
async fn executions(app: &TestApp, n: usize) {
    for _ in 0..200 {
        if app.state.subscriptions.executions() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "expected {n} shared executions, found {}",
        app.state.subscriptions.executions()
    );
}

async fn identical_subscriptions_execute_once(app: TestApp) {
    const DOC: &str = "subscription { usageAlerts { id kind organization { id } } }";
    let a = app.create_org("alpha", "basic").await;
    let b = app.create_org("bravo", "basic").await;
    let connect = |token: String| async move {
        let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
        ws.init(bearer(&token)).await;
        ws
    };
    let listening = app.state.engine.bus.listeners();
    let mut v1 = connect(app.tenant_token(&a, Role::Viewer)).await;
    let mut v2 = connect(app.tenant_token(&a, Role::Viewer)).await;
    let mut admin = connect(app.tenant_token(&a, Role::Admin)).await;
    let mut other = connect(app.tenant_token(&b, Role::Viewer)).await;
    let mut legacy = Ws::connect(app.addr, Some("graphql-ws")).await;
    legacy
        .send(json!({ "type": "connection_init", "payload": bearer(&app.tenant_token(&a, Role::Viewer)) }))
        .await;
    assert_eq!(legacy.message().await["type"], "connection_ack");
    for ws in [&mut v1, &mut v2, &mut admin, &mut other] {
        ws.subscribe("s", DOC, json!({})).await;
    }
    legacy
        .send(json!({ "type": "start", "id": "l", "payload": { "query": DOC } }))
        .await;
    // The viewers of alpha (either protocol) share one; alpha's admin, and bravo, have their own.
    executions(&app, 3).await;
    // A subscription that replays from `since` runs alone; one that declares it but leaves it
    // unset shares.
    let mut replaying = connect(app.tenant_token(&a, Role::Viewer)).await;
    replaying
        .subscribe(
            "r",
            ALERTS,
            json!({ "since": chrono::Utc::now().to_rfc3339() }),
        )
        .await;
    v2.subscribe("t", ALERTS, json!({ "since": null })).await;
    executions(&app, 4).await;
    // Each execution has its own receiver, the replaying one too.
    app.until_listening(listening + 5).await;

    let service = app.tenant_token(&a, Role::Service);
    app.record(&service, "bookings", "85").await;
    let mut ids = Vec::new();
    let mut messages = Vec::new();
    for ws in [&mut v1, &mut admin, &mut replaying] {
        messages.push(ws.message().await);
    }
    // v2 has two operations on that alert.
    let (t1, t2) = (v2.message().await, v2.message().await);
    let mut v2_ops = vec![t1["id"].clone(), t2["id"].clone()];
    v2_ops.sort_by_key(|v| v.to_string());
    assert_eq!(v2_ops, [json!("s"), json!("t")]);
    messages.extend([t1, t2]);
    for m in messages {
        assert_eq!(m["type"], "next", "{m}");
        let alert = &m["payload"]["data"]["usageAlerts"];
        assert_eq!(alert["kind"], "NEAR_LIMIT", "{m}");
        assert_eq!(alert["organization"]["id"], a.as_str());
        ids.push(alert["id"].clone());
    }
    let l = legacy.message().await;
    assert_eq!(l["type"], "data", "{l}");
    assert_eq!(l["id"], "l");
    ids.push(l["payload"]["data"]["usageAlerts"]["id"].clone());
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    assert_eq!(other.next_within(Duration::from_millis(300)).await, None);

    // One member stopping leaves the others subscribed; the last one leaving ends the execution.
    v1.send(json!({ "type": "complete", "id": "s" })).await;
    app.record(&service, "bookings", "20").await;
    let m = v2.message().await;
    assert_eq!(
        m["payload"]["data"]["usageAlerts"]["kind"], "LIMIT_EXCEEDED",
        "{m}"
    );
    assert_eq!(v1.next_within(Duration::from_millis(300)).await, None);
    drop(v2);
    drop(legacy);
    executions(&app, 2).await;

    // Identical subscriptions that are refused are all refused, each in its own protocol's shape.
    let foreign = format!("subscription {{ usageAlerts(organizationId: \"{a}\") {{ id }} }}");
    let mut o2 = connect(app.tenant_token(&b, Role::Viewer)).await;
    other.subscribe("f", &foreign, json!({})).await;
    o2.subscribe("f", &foreign, json!({})).await;
    for ws in [&mut other, &mut o2] {
        let m = ws.message().await;
        assert_eq!(m["type"], "error", "{m}");
        assert_eq!(m["payload"][0]["extensions"]["code"], "NOT_FOUND", "{m}");
    }
    executions(&app, 2).await;

    // Queries and mutations sent over the socket never share: each caller's runs for it alone.
    let service_a = |sub: &str| app.token(sub, Some(&a), Some(Role::Service));
    let mut s1 = connect(service_a("worker-1")).await;
    let mut s2 = connect(service_a("worker-2")).await;
    let used = "{ organization { usage { metric(code: \"bookings\") { used } } } }";
    let before = app.ok(&service, used, json!({})).await["organization"]["usage"]["metric"]["used"]
        .as_str()
        .expect("used")
        .parse::<i64>()
        .expect("a whole number");
    let record =
        "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"1\"}) { accepted } }";
    let me = "{ viewer { userId } }";
    for ws in [&mut s1, &mut s2] {
        ws.subscribe("m", record, json!({})).await;
        ws.subscribe("q", me, json!({})).await;
    }
    let mut users = Vec::new();
    for ws in [&mut s1, &mut s2] {
        // Each operation answers `next` then `complete`.
        for _ in 0..4 {
            let m = ws.message().await;
            if m["type"] == "complete" {
                continue;
            }
            assert_eq!(m["type"], "next", "{m}");
            match m["id"].as_str() {
                Some("m") => assert_eq!(m["payload"]["data"]["recordUsage"]["accepted"], true),
                Some("q") => users.push(m["payload"]["data"]["viewer"]["userId"].clone()),
                other => panic!("unexpected operation {other:?}"),
            }
        }
    }
    users.sort_by_key(|u| u.to_string());
    assert_eq!(users, [json!("worker-1"), json!("worker-2")]);
    let d = app.ok(&service, used, json!({})).await;
    assert_eq!(
        d["organization"]["usage"]["metric"]["used"],
        (before + 2).to_string(),
        "both recordings count"
    );
}
both_engines!(shared, super::identical_subscriptions_execute_once);

async fn usage_updates_coalesce_and_end_on_the_latest(app: TestApp) {
    let org = app.create_org("acme", "growth").await;
    let mut ws = subscribed_viewer(
        &app,
        &org,
        "subscription { usageUpdated { metric(code: \"bookings\") { used } } }",
    )
    .await;
    let service = app.tenant_token(&org, Role::Service);
    for _ in 0..30 {
        app.record(&service, "bookings", "1").await;
    }
    let mut seen = Vec::new();
    while let Some(Event::Msg(m)) = ws.next_within(Duration::from_millis(1500)).await {
        seen.push(m["payload"]["data"]["usageUpdated"]["metric"]["used"].clone());
    }
    assert!(!seen.is_empty() && seen.len() < 30, "coalesced: {seen:?}");
    assert_eq!(
        seen.last(),
        Some(&json!("30")),
        "ends on the latest: {seen:?}"
    );
}
both_engines!(updates, super::usage_updates_coalesce_and_end_on_the_latest);

async fn a_lagging_subscriber_is_told_what_it_missed(app: TestApp) {
    use tollgate::alerts::BusEvent;
    let org = app.create_org("acme", "basic").await;
    let viewer = tollgate::auth::viewer_from_token(
        &app.state.keys,
        app.state.team.borrow().clone(),
        app.state.engine.db.pool(),
        &app.tenant_token(&org, Role::Viewer),
    )
    .await
    .unwrap();
    let ctx = tollgate::graphql::RequestCtx::new(
        app.state.engine.clone(),
        app.state.settings.clone(),
        Some(viewer),
    );
    let request = async_graphql::Request::new("subscription { usageAlerts { kind } }").data(ctx);
    let mut stream = Box::pin(app.state.schema.execute_stream(request));
    // The first poll starts the subscription; nothing has happened yet.
    assert!(
        tokio::time::timeout(Duration::from_millis(100), stream.next())
            .await
            .is_err()
    );
    // A burst larger than the organization's channel, while this subscriber is not reading.
    let oid = uuid::Uuid::parse_str(&org).unwrap();
    for _ in 0..300 {
        app.state
            .engine
            .bus
            .send(BusEvent::Alert(std::sync::Arc::new(
                entity::usage_alert::Model {
                    organization_id: oid,
                    id: uuid::Uuid::now_v7(),
                    metric_code: "bookings".into(),
                    kind: entity::enums::AlertKind::NearLimit,
                    period_start: chrono::Utc::now().date_naive(),
                    alert_epoch: 0,
                    threshold_pct: 800_000,
                    used: 0,
                    allowance: 0,
                    utilization_pct: 0,
                    created_at: chrono::Utc::now(),
                },
            )));
    }
    let first = stream.next().await.unwrap();
    let err = &first.errors[0];
    let ext = serde_json::to_value(&err.extensions).unwrap();
    assert_eq!(ext["code"], "LAGGED", "{ext}");
    assert_eq!(ext["missed"], 300 - 256);
    // Then the stream goes on with what it still holds.
    let next = stream.next().await.unwrap();
    assert!(next.errors.is_empty());
}
both_engines!(lagging, super::a_lagging_subscriber_is_told_what_it_missed);

async fn connection_limits_hold(app: TestApp) {
    let a = app.create_org("alpha", "basic").await;
    let b = app.create_org("bravo", "basic").await;
    let token_a = app.tenant_token(&a, Role::Viewer);
    let mut first = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    first.init(bearer(&token_a)).await;
    // A second connection of the same organization is past its limit of 1.
    let mut second = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    second
        .send(json!({ "type": "connection_init", "payload": bearer(&token_a) }))
        .await;
    assert_eq!(second.closed_with().await, 1013);
    // Another organization still gets in, up to the total of 2; the third upgrade is refused.
    let mut other = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    other
        .init(bearer(&app.tenant_token(&b, Role::Viewer)))
        .await;
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/graphql", app.addr)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503)
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    // Closing one frees its place (as soon as the server has seen the close).
    drop(first);
    let started = Instant::now();
    loop {
        if tokio_tungstenite::connect_async(format!("ws://{}/graphql", app.addr))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the closed connection's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
both_engines!(
    limits,
    super::connection_limits_hold,
    &["--ws-max-connections", "2", "--ws-max-per-tenant", "1"]
);

async fn each_pushed_result_reads_fresh_data(app: TestApp) {
    let org = app.create_org("acme", "growth").await;
    let mut ws = subscribed_viewer(
        &app,
        &org,
        "subscription { usageUpdated { plan { name } metric(code: \"bookings\") { used } } }",
    )
    .await;
    let service = app.tenant_token(&org, Role::Service);
    app.record(&service, "bookings", "1").await;
    let first = ws.message().await;
    assert_eq!(
        first["payload"]["data"]["usageUpdated"]["plan"]["name"],
        "Growth"
    );
    // The plan is renamed; the subscription's next result must not answer from what it loaded before.
    app.upsert_plan(
        "growth",
        "Growth Plus",
        2,
        "299",
        "included: \"1000\", enforcement: OVERAGE, overageUnitPrice: \"0.5\"",
    )
    .await;
    app.record(&service, "bookings", "1").await;
    let second = ws.message().await;
    assert_eq!(
        second["payload"]["data"]["usageUpdated"]["plan"]["name"], "Growth Plus",
        "{second}"
    );
    assert_eq!(
        second["payload"]["data"]["usageUpdated"]["metric"]["used"],
        "2"
    );
}
both_engines!(fresh, super::each_pushed_result_reads_fresh_data);

/// Subscription events are completed like any response: fields in the order asked, every event;
/// a subscription selecting two root fields is refused.
async fn subscription_events_keep_the_query_order(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let mut ws = Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(bearer(&app.tenant_token(&org, Role::Viewer))).await;
    let listening = app.state.engine.bus.listeners();
    ws.subscribe(
        "o",
        "subscription { usageAlerts { id organization { slug id } kind metric { code } used } }",
        json!({}),
    )
    .await;
    app.until_listening(listening + 1).await;
    let service = app.tenant_token(&org, Role::Service);
    app.record(&service, "bookings", "85").await;
    app.record(&service, "bookings", "20").await;
    for _ in 0..2 {
        let text = ws.text().await;
        let at = |k: &str| {
            text.find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("{k}: {text}"))
        };
        let order = [
            "id",
            "organization",
            "slug",
            "kind",
            "metric",
            "code",
            "used",
        ]
        .map(at);
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
    ws.subscribe(
        "two",
        "subscription { usageAlerts { id } usageUpdated { periodStart } }",
        json!({}),
    )
    .await;
    let refused = ws.message().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "BAD_USER_INPUT"
    );
}
both_engines!(event_order, super::subscription_events_keep_the_query_order);

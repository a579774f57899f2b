//! Production on Postgres: row-level security as the second wall, alerts across replicas, graceful
//! shutdown, metrics.

use serde_json::json;
use tollgate::domain::{OrganizationId, Role, Scope};
use tollgate::store;

use crate::helpers::{Engine, TestApp, spawn_app};

async fn organization_ids_in<C: sea_orm::ConnectionTrait>(db: &C, sql: &str) -> Vec<uuid::Uuid> {
    let rows = store::query_all(db, sql, vec![]).await.expect("query");
    let mut ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.try_get("", "o").unwrap()).collect();
    ids.sort();
    ids.dedup();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn row_level_security_hides_other_tenants_from_unscoped_queries() {
    let Some(app) = spawn_app(Engine::Postgres, &[]).await else {
        return;
    };
    let a = app.create_org("alpha", "basic").await;
    let b = app.create_org("bravo", "basic").await;
    for org in [&a, &b] {
        let t = app.tenant_token(org, Role::Service);
        app.record(&t, "bookings", "90").await;
        let pay = format!(
            "mutation {{ recordPayment(input: {{stripePaymentIntentId: \"pi_{org}\", amount: \"1.00\", currency: \"usd\"}}) {{ id }} }}"
        );
        app.ok(&t, &pay, serde_json::json!({})).await;
    }
    // Every table with an organization column has row-level security, forced on its owner (the
    // Stripe event log is the platform's own record, not a tenant's).
    let unprotected = store::query_all(
        app.state.engine.db.pool(),
        "SELECT c.relname AS t FROM pg_class c JOIN information_schema.columns col \
           ON col.table_name = c.relname AND col.column_name = 'organization_id' \
         WHERE c.relkind = 'r' AND NOT (c.relrowsecurity AND c.relforcerowsecurity) \
           AND c.relname <> 'stripe_events'",
        vec![],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get::<String>("", "t").unwrap())
    .collect::<Vec<_>>();
    assert!(
        unprotected.is_empty(),
        "tenant tables without row-level security: {unprotected:?}"
    );
    let (ua, ub) = (
        uuid::Uuid::parse_str(&a).unwrap(),
        uuid::Uuid::parse_str(&b).unwrap(),
    );
    let base = &app.state.engine.db;
    let tenant = base.scoped(Scope::Tenant(OrganizationId(ua)));
    // Queries that forgot their organization filter, through the app's connection setup.
    for sql in [
        "SELECT organization_id AS o FROM usage_events",
        "SELECT organization_id AS o FROM usage_counters",
        "SELECT organization_id AS o FROM organization_usage",
        "SELECT organization_id AS o FROM usage_alerts",
        "SELECT organization_id AS o FROM payments",
        "SELECT id AS o FROM organizations",
    ] {
        assert_eq!(organization_ids_in(&tenant, sql).await, [ua], "{sql}");
    }
    tenant.release().await;
    let mut both = vec![ua, ub];
    both.sort();
    let platform = base.scoped(Scope::Platform);
    assert_eq!(
        organization_ids_in(&platform, "SELECT organization_id AS o FROM usage_events").await,
        both
    );
    platform.release().await;

    // A transaction that set no scope sees nothing at all (fail closed).
    let rows = store::query_all(
        base.pool(),
        "SELECT organization_id AS o FROM usage_events",
        vec![],
    )
    .await
    .unwrap();
    assert!(rows.is_empty(), "no scope, no rows");

    // And a tenant's transaction cannot write another tenant's rows.
    let txn = tenant.begin_write().await.unwrap();
    let denied = store::execute(
        &txn,
        "UPDATE usage_counters SET used = 0 WHERE organization_id = $1",
        vec![ub.into()],
    )
    .await
    .unwrap();
    assert_eq!(
        denied, 0,
        "another tenant's counters are invisible to an UPDATE"
    );
    let insert = store::execute(
        &txn,
        "INSERT INTO usage_alerts (organization_id, id, metric_code, kind, period_start, alert_epoch, \
         threshold_pct, used, allowance, utilization_pct, created_at) \
         VALUES ($1, $2, 'bookings', 'NEAR_LIMIT', '2026-01-01', 0, 0, 0, 0, 0, now())",
        vec![ub.into(), uuid::Uuid::now_v7().into()],
    )
    .await;
    assert!(
        insert.is_err(),
        "WITH CHECK refuses a row of another tenant"
    );
    drop(txn);

    // The server warns at boot when its role would bypass the policies; this one does not.
    let row = store::query_one(
        base.pool(),
        "SELECT rolsuper OR rolbypassrls AS bypass FROM pg_roles WHERE rolname = current_user",
        vec![],
    )
    .await
    .unwrap()
    .unwrap();
    assert!(!row.try_get::<bool>("", "bypass").unwrap());
    assert!(!store::bypasses_rls(base.pool()).await.unwrap());
}

/// The group writer's scope (`tollgate.org_ids`, m20261130_000014 and _000015) is a wall too: a
/// transaction scoped to a group of organizations reads and writes those, and no other; a caller's
/// own scope set afterwards (`recording::enter`) empties the list. And every policy reads the scope
/// once per statement: no row filter calls `current_setting`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_scope_reaches_its_organizations_and_no_other() {
    let Some(app) = spawn_app(Engine::Postgres, &[]).await else {
        return;
    };
    let mut ids = Vec::new();
    for name in ["alpha", "bravo", "charlie"] {
        let org = app.create_org(name, "basic").await;
        app.record(&app.tenant_token(&org, Role::Service), "bookings", "5")
            .await;
        ids.push(uuid::Uuid::parse_str(&org).unwrap());
    }
    let (a, b, c) = (ids[0], ids[1], ids[2]);
    let mut group = vec![a, b];
    group.sort();
    let base = &app.state.engine.db;
    let txn = base.begin_write().await.unwrap();
    store::group::enter(&*txn, &[OrganizationId(a), OrganizationId(b)], true)
        .await
        .unwrap();
    for sql in [
        "SELECT organization_id AS o FROM usage_events",
        "SELECT organization_id AS o FROM usage_counters",
        "SELECT organization_id AS o FROM organization_usage",
        "SELECT id AS o FROM organizations",
    ] {
        assert_eq!(organization_ids_in(&*txn, sql).await, group, "{sql}");
    }
    let moved = store::execute(
        &*txn,
        "UPDATE usage_counters SET used = used WHERE organization_id = ANY($1)",
        vec![vec![a, b, c].into()],
    )
    .await
    .unwrap();
    assert_eq!(moved, 2, "the group's two counters, not the third's");
    let plan = store::query_all(
        &*txn,
        "EXPLAIN (VERBOSE) SELECT organization_id FROM usage_counters",
        vec![],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.try_get_by_index::<String>(0).unwrap())
    .collect::<Vec<_>>()
    .join("\n");
    let filter = plan
        .lines()
        .find(|l| l.trim_start().starts_with("Filter:"))
        .unwrap_or_else(|| panic!("no row filter: {plan}"));
    assert!(
        !filter.contains("current_setting"),
        "the scope is read once per statement, not per row: {plan}"
    );
    // The caller's own scope, as a run that goes alone sets it: the list is emptied.
    store::recording::enter(&*txn, Scope::Tenant(OrganizationId(a)), OrganizationId(a))
        .await
        .unwrap();
    assert_eq!(
        organization_ids_in(&*txn, "SELECT organization_id AS o FROM usage_counters").await,
        [a]
    );
    // Back to the group: a row of an organization outside it is refused (WITH CHECK).
    store::group::enter(&*txn, &[OrganizationId(a), OrganizationId(b)], false)
        .await
        .unwrap();
    let insert = store::execute(
        &*txn,
        "INSERT INTO usage_alerts (organization_id, id, metric_code, kind, period_start, alert_epoch, \
         threshold_pct, used, allowance, utilization_pct, created_at) \
         VALUES ($1, $2, 'bookings', 'NEAR_LIMIT', '2026-01-01', 0, 0, 0, 0, 0, now())",
        vec![c.into(), uuid::Uuid::now_v7().into()],
    )
    .await;
    let refused = format!(
        "{:?}",
        insert.expect_err("WITH CHECK refuses a row outside the group")
    );
    assert!(refused.contains("row-level security"), "{refused}");
    txn.rollback().await.unwrap();
}

async fn metrics_are_exposed(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    let t = app.tenant_token(&org, Role::Service);
    let body = app
        .gql(
            &t,
            "mutation Record { recordUsage(input: {metric: \"bookings\", quantity: \"90\"}) { accepted } }",
            json!({}),
        )
        .await;
    assert_eq!(body["data"]["recordUsage"]["accepted"], true);
    app.ok(&t, "query Dashboard { organization { name } }", json!({}))
        .await;
    let mut ws = crate::ws::Ws::connect(app.addr, Some("graphql-transport-ws")).await;
    ws.init(crate::ws::bearer(&app.tenant_token(&org, Role::Viewer)))
        .await;
    let resp = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    for needle in [
        "tollgate_graphql_requests_total{operation=\"Record\",outcome=\"ok\"}",
        "tollgate_graphql_request_duration_seconds_bucket{operation=\"Dashboard\"",
        "tollgate_recordings_total{outcome=\"accepted\"}",
        "tollgate_alerts_total{kind=\"NEAR_LIMIT\"}",
        "tollgate_websocket_connections",
        "tollgate_bus_listeners",
        "tollgate_db_pool_connections{state=\"idle\"}",
        "tollgate_db_pool_max_connections",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
}
crate::both_engines!(metrics, super::metrics_are_exposed);

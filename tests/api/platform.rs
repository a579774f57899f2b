//! The platform's pages of `usageSummaries`: filters and orders on a metric's utilization (or an
//! organization's highest), keyset cursors, and the utilization index they read, which must answer
//! exactly what the organizations' own `usage` says, at a cost that does not grow with the number of
//! organizations.

use std::cmp::Ordering;

use chrono::{Datelike, Months};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use tollgate::domain::{OrganizationId, Period, Role};

use crate::both_engines;
use crate::helpers::{TestApp, code};

const PAGE: &str = "query($p: Date, $metric: String, $min: Float, $exceeded: Boolean, $order: UsageSummaryOrder, $first: Int, $after: String) { \
    usageSummaries(period: $p, metric: $metric, minUtilizationPct: $min, exceededOnly: $exceeded, orderBy: $order, first: $first, after: $after) { \
      totalCount pageInfo { hasNextPage endCursor } edges { cursor node { organization { id slug } } } } }";

/// Every page of a query, followed by its cursors: the organizations' ids in order, and totalCount.
async fn walk(app: &TestApp, token: &str, vars: Value, first: i64) -> (Vec<String>, u64) {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    let mut total = None;
    for _ in 0..1000 {
        let mut v = vars.clone();
        v["first"] = json!(first);
        v["after"] = json!(after);
        let data = app.ok(token, PAGE, v).await;
        let page = &data["usageSummaries"];
        let t = page["totalCount"].as_u64().unwrap();
        assert_eq!(*total.get_or_insert(t), t, "totalCount moved between pages");
        for e in page["edges"].as_array().unwrap() {
            ids.push(e["node"]["organization"]["id"].as_str().unwrap().to_owned());
        }
        if page["pageInfo"]["hasNextPage"] != true {
            return (ids, t);
        }
        after = Some(page["pageInfo"]["endCursor"].as_str().unwrap().to_owned());
    }
    panic!("pages never ended");
}

/// One metric as an organization's `usage` shows it.
struct Shown {
    code: String,
    used: Decimal,
    allowance: Option<Decimal>,
}

impl Shown {
    /// Exact utilization (None: unlimited): used / allowance * 100; 100 or 0 at an allowance of zero.
    fn utilization(&self) -> Option<Decimal> {
        let a = self.allowance?;
        Some(if a <= Decimal::ZERO {
            if self.used > Decimal::ZERO {
                Decimal::ONE_HUNDRED
            } else {
                Decimal::ZERO
            }
        } else {
            self.used * Decimal::ONE_HUNDRED / a
        })
    }

    fn at_least(&self, pct: Decimal) -> bool {
        match self.allowance {
            None => false,
            Some(a) if a <= Decimal::ZERO => self.utilization().is_some_and(|u| u >= pct),
            Some(a) => self.used * Decimal::ONE_HUNDRED >= pct * a,
        }
    }

    fn exceeded(&self) -> bool {
        self.allowance.is_some_and(|a| self.used > a)
    }
}

struct Org {
    id: String,
    slug: String,
    metrics: Vec<Shown>,
}

fn dec(v: &Value) -> Option<Decimal> {
    v.as_str().map(|s| s.parse().unwrap())
}

/// Every organization's usage in `period`, as each one's own `usage` field answers it.
async fn reference(app: &TestApp, period: &str) -> Vec<Org> {
    let data = app
        .ok(
            &app.platform_token(),
            "query($p: Date) { organizations(first: 100) { nodes { id slug usage(period: $p) { metrics { metric { code } used allowance } } } } }",
            json!({ "p": period }),
        )
        .await;
    data["organizations"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| Org {
            id: n["id"].as_str().unwrap().to_owned(),
            slug: n["slug"].as_str().unwrap().to_owned(),
            metrics: n["usage"]["metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| Shown {
                    code: m["metric"]["code"].as_str().unwrap().to_owned(),
                    used: dec(&m["used"]).unwrap(),
                    allowance: dec(&m["allowance"]),
                })
                .collect(),
        })
        .collect()
}

/// What a page must hold, in order, computed from the organizations' own usage.
fn expected(
    orgs: &[Org],
    metric: Option<&str>,
    min: Option<f64>,
    exceeded_only: bool,
    by_utilization: bool,
) -> Vec<String> {
    fn subject<'a>(o: &'a Org, metric: Option<&str>) -> Vec<&'a Shown> {
        o.metrics
            .iter()
            .filter(|m| m.allowance.is_some() && metric.is_none_or(|c| c == m.code))
            .collect()
    }
    let subject = |o| subject(o, metric);
    let mut rows: Vec<(&Org, Option<Decimal>)> = orgs
        .iter()
        .filter(|o: &&Org| {
            let ms = subject(o);
            let pct_ok = min.is_none_or(|p| {
                let p = Decimal::try_from(p).unwrap();
                ms.iter().any(|m| m.at_least(p))
            });
            let exceeded_ok = !exceeded_only || ms.iter().any(|m| m.exceeded());
            pct_ok && exceeded_ok
        })
        .map(|o| (o, subject(o).iter().filter_map(|m| m.utilization()).max()))
        .collect();
    if by_utilization {
        rows.sort_by(|(a, ua), (b, ub)| match (ua, ub) {
            (Some(x), Some(y)) => y.cmp(x).then_with(|| a.id.cmp(&b.id)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => a.id.cmp(&b.id),
        });
    } else {
        rows.sort_by(|(a, _), (b, _)| a.slug.cmp(&b.slug));
    }
    rows.into_iter().map(|(o, _)| o.id.clone()).collect()
}

/// Every combination of metric, threshold, exceededOnly and order, paged by 4, against the
/// reference. Answers how many pages were compared.
async fn compare_all(app: &TestApp, period: &str) -> usize {
    let platform = app.platform_token();
    let orgs = reference(app, period).await;
    let mut compared = 0;
    for metric in [None, Some("bookings"), Some("venues"), Some("staff")] {
        for min in [None, Some(0.0), Some(50.0), Some(80.0), Some(100.0)] {
            for exceeded in [false, true] {
                for (order, by_utilization) in [("NAME", false), ("UTILIZATION_DESC", true)] {
                    let vars = json!({ "p": period, "metric": metric, "min": min, "exceeded": exceeded, "order": order });
                    let (got, total) = walk(app, &platform, vars.clone(), 4).await;
                    let want = expected(&orgs, metric, min, exceeded, by_utilization);
                    assert_eq!(got, want, "{vars}");
                    assert_eq!(total as usize, want.len(), "totalCount {vars}");
                    compared += 1;
                }
            }
        }
    }
    compared
}

async fn correct(app: &TestApp, mutation: &str, org: &str, metric: &str, q: &str, period: &str) {
    let query = format!(
        "mutation($i: {}Input!) {{ {mutation}(input: $i) {{ used }} }}",
        if mutation == "grantCredit" {
            "GrantCredit"
        } else {
            "AdjustUsage"
        }
    );
    app.ok(
        &app.platform_token(),
        &query,
        json!({ "i": { "organizationId": org, "metric": metric, "quantity": q, "period": period, "reason": "test" } }),
    )
    .await;
}

/// Random organizations, plans, recordings, credits, plan changes and GAUGE readings in the previous
/// period (carried into this one): every page answers what the organizations' own usage says, from
/// the index and from the computed fallback alike, and recompute finds the index right.
async fn pages_equal_the_organizations_usage(app: TestApp) {
    app.upsert_plan(
        "zero",
        "Zero",
        10,
        "1",
        "included: \"0\", enforcement: SOFT",
    )
    .await;
    app.upsert_plan(
        "tiny",
        "Tiny",
        11,
        "2",
        "included: \"10\", enforcement: OVERAGE, overageUnitPrice: \"1\"",
    )
    .await;
    let plans = ["basic", "growth", "enterprise", "zero", "tiny"];
    let current = Period::current().start;
    let previous = current.checked_sub_months(Months::new(1)).unwrap();
    let (now, before) = (current.to_string(), previous.to_string());
    let mut rng = StdRng::seed_from_u64(14);
    let mut orgs = Vec::new();
    for i in 0..22 {
        let plan = plans[rng.random_range(0..plans.len())];
        let id = app
            .create_org(&format!("org-{:02}", (i * 7) % 22), plan)
            .await;
        let service = app.tenant_token(&id, Role::Service);
        // Readings in the previous period only: this period carries them.
        if rng.random_bool(0.5) {
            let q = rng.random_range(1..8).to_string();
            correct(&app, "adjustUsage", &id, "venues", &q, &before).await;
        }
        if rng.random_bool(0.4) {
            let q = rng.random_range(1..30).to_string();
            correct(&app, "adjustUsage", &id, "staff", &q, &before).await;
        }
        if rng.random_bool(0.7) {
            let q = rng.random_range(1..1200).to_string();
            app.record(&service, "bookings", &q).await;
        }
        if rng.random_bool(0.3) {
            // A reading of this period (a HARD limit may refuse it).
            let q = rng.random_range(0..6).to_string();
            app.record(&service, "staff", &q).await;
        }
        if rng.random_bool(0.3) {
            let q = rng.random_range(1..200).to_string();
            correct(&app, "grantCredit", &id, "bookings", &q, &now).await;
        }
        if rng.random_bool(0.25) {
            let to = plans[rng.random_range(0..plans.len())];
            let _ = app
                .gql(
                    &app.platform_token(),
                    "mutation($i: ChangePlanInput!) { changePlan(input: $i) { __typename } }",
                    json!({ "i": { "organizationId": id, "planCode": to, "reason": "test" } }),
                )
                .await;
        }
        orgs.push(id);
    }
    // A plan's limits change under its organizations, and a late GAUGE reading moves what this
    // period carries.
    app.upsert_plan(
        "tiny",
        "Tiny",
        11,
        "2",
        "included: \"40\", enforcement: SOFT",
    )
    .await;
    correct(&app, "adjustUsage", &orgs[3], "venues", "2", &before).await;

    // From the index.
    app.state
        .engine
        .materialize_period(Period::current())
        .await
        .unwrap();
    assert!(
        app.state
            .engine
            .index_complete(Period::current())
            .await
            .unwrap()
    );
    assert_eq!(compare_all(&app, &now).await, 80);
    for org in &orgs {
        let id = OrganizationId(org.parse().unwrap());
        let report = app
            .state
            .engine
            .recompute_org(id, None, false)
            .await
            .unwrap();
        assert!(report.differences.is_empty(), "{:?}", report.differences);
    }
    // The previous period is always computed.
    compare_all(&app, &before).await;
    // Computed from the counters while the index is not known complete: the same answers.
    app.sql("DELETE FROM usage_index_periods").await;
    app.state
        .engine
        .indexed_period
        .store(0, std::sync::atomic::Ordering::Relaxed);
    assert!(
        !app.state
            .engine
            .index_complete(Period::current())
            .await
            .unwrap()
    );
    compare_all(&app, &now).await;
    // The materialization is idempotent and completes it again.
    app.state
        .engine
        .materialize_period(Period::current())
        .await
        .unwrap();
    assert!(
        app.state
            .engine
            .index_complete(Period::current())
            .await
            .unwrap()
    );
    compare_all(&app, &now).await;
    let _ = current.day();
}
both_engines!(
    pages_equal_usage,
    super::pages_equal_the_organizations_usage
);

/// The seed's use case 2 in one request, the orders, cursors, errors and a tenant's view.
async fn metric_and_order_through_the_api(app: TestApp) {
    let platform = app.platform_token();
    let mut ids = Vec::new();
    // bookings on basic (100 included): 95, 80, 80, 30, 120 and nothing.
    for (slug, used) in [
        ("delta", "95"),
        ("alpha", "80"),
        ("echo", "80"),
        ("bravo", "30"),
        ("charlie", "120"),
        ("foxtrot", ""),
    ] {
        let id = app.create_org(slug, "basic").await;
        if !used.is_empty() {
            app.record(&app.tenant_token(&id, Role::Service), "bookings", used)
                .await;
        }
        ids.push((slug, id));
    }
    app.create_org("golf", "enterprise").await;
    app.state
        .engine
        .materialize_period(Period::current())
        .await
        .unwrap();
    let q = "{ usageSummaries(metric: \"bookings\", minUtilizationPct: 80, orderBy: UTILIZATION_DESC, first: 50) { \
               totalCount nodes { organization { slug } metrics { metric { code } utilizationPct } } } }";
    let data = app.ok(&platform, q, json!({})).await;
    let slugs: Vec<&str> = data["usageSummaries"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["organization"]["slug"].as_str().unwrap())
        .collect();
    // 120%, 95%, then the two at 80% by id.
    let id_of = |s: &str| ids.iter().find(|(slug, _)| *slug == s).unwrap().1.clone();
    let mut at_80 = vec!["alpha", "echo"];
    at_80.sort_by_key(|s| id_of(s));
    assert_eq!(slugs, [vec!["charlie", "delta"], at_80].concat());
    assert_eq!(data["usageSummaries"]["totalCount"], 4);

    // Paged by one, the cursors follow the order; NAME orders by slug (the default).
    let (by_util, total) = walk(
        &app,
        &platform,
        json!({ "metric": "bookings", "min": 80.0, "order": "UTILIZATION_DESC" }),
        1,
    )
    .await;
    assert_eq!(total, 4);
    assert_eq!(
        by_util
            .iter()
            .map(|i| ids.iter().find(|(_, id)| id == i).unwrap().0)
            .collect::<Vec<_>>(),
        slugs
    );
    let (by_name, _) = walk(
        &app,
        &platform,
        json!({ "metric": "bookings", "min": 80.0, "order": "NAME" }),
        3,
    )
    .await;
    let (default, _) = walk(
        &app,
        &platform,
        json!({ "metric": "bookings", "min": 80.0 }),
        3,
    )
    .await;
    assert_eq!(by_name, default);
    assert_eq!(
        by_name,
        ["alpha", "charlie", "delta", "echo"].map(id_of).to_vec()
    );
    let (exceeded, total) = walk(
        &app,
        &platform,
        json!({ "metric": "bookings", "exceeded": true, "order": "UTILIZATION_DESC" }),
        2,
    )
    .await;
    assert_eq!((exceeded, total), (vec![id_of("charlie")], 1));
    // Unfiltered by utilization: every organization, the unlimited one last.
    let (all, total) = walk(
        &app,
        &platform,
        json!({ "metric": "bookings", "order": "UTILIZATION_DESC" }),
        2,
    )
    .await;
    assert_eq!(total, 7);
    assert_eq!(all.len(), 7);
    assert_eq!(all[6], ids_of_slug(&app, "golf").await);

    // A cursor of one order (or metric) is refused by another.
    let name_page = app
        .ok(
            &platform,
            PAGE,
            json!({ "metric": "bookings", "min": 0.0, "first": 1 }),
        )
        .await;
    let name_cursor = name_page["usageSummaries"]["pageInfo"]["endCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    let util_page = app
        .ok(
            &platform,
            PAGE,
            json!({ "metric": "bookings", "min": 0.0, "first": 1, "order": "UTILIZATION_DESC" }),
        )
        .await;
    let util_cursor = util_page["usageSummaries"]["pageInfo"]["endCursor"]
        .as_str()
        .unwrap()
        .to_owned();
    for vars in [
        json!({ "metric": "bookings", "order": "UTILIZATION_DESC", "after": name_cursor }),
        json!({ "metric": "bookings", "order": "NAME", "after": util_cursor }),
        json!({ "metric": "venues", "order": "UTILIZATION_DESC", "after": util_cursor }),
        json!({ "order": "UTILIZATION_DESC", "after": util_cursor }),
        json!({ "order": "UTILIZATION_DESC", "after": "not-a-cursor" }),
        json!({ "metric": "parking" }),
        json!({ "metric": "" }),
        json!({ "metric": "Bookings; DROP TABLE organizations" }),
        json!({ "min": 1e308, "first": -1 }),
    ] {
        let body = app.gql(&platform, PAGE, vars.clone()).await;
        assert_eq!(code(&body), Some("BAD_USER_INPUT"), "{vars}: {body}");
    }

    // A tenant sees only its own row, whatever it asks.
    let delta = app.tenant_token(&id_of("delta"), Role::Viewer);
    for vars in [
        json!({ "metric": "bookings", "min": 80.0, "order": "UTILIZATION_DESC" }),
        json!({ "order": "UTILIZATION_DESC" }),
        json!({ "exceeded": false, "metric": "venues", "min": 0.0 }),
    ] {
        let (rows, total) = walk(&app, &delta, vars.clone(), 5).await;
        assert_eq!((rows, total), (vec![id_of("delta")], 1), "{vars}");
    }
    let alpha = app.tenant_token(&id_of("bravo"), Role::Viewer);
    let (rows, total) = walk(
        &app,
        &alpha,
        json!({ "metric": "bookings", "min": 80.0, "order": "UTILIZATION_DESC" }),
        5,
    )
    .await;
    assert_eq!((rows.len(), total), (0, 0));
}
both_engines!(metric_and_order, super::metric_and_order_through_the_api);

async fn ids_of_slug(app: &TestApp, slug: &str) -> String {
    let data = app
        .ok(
            &app.platform_token(),
            "{ organizations(first: 100) { nodes { id slug } } }",
            json!({}),
        )
        .await;
    data["organizations"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["slug"] == slug)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The use-case page costs the same statements for 100 and for 1,000 organizations, and on
/// Postgres its plan is a scan of the index.
async fn a_platform_page_costs_constant_statements(app: TestApp) {
    let platform = app.platform_token();
    let query = "{ usageSummaries(metric: \"bookings\", minUtilizationPct: 80, orderBy: UTILIZATION_DESC, first: 50) { \
                   totalCount nodes { organization { name } hasExceededLimits metrics { metric { code } used utilizationPct } } } }";
    let mut costs = Vec::new();
    let mut created = 0;
    for n in [100, 1000] {
        while created < n {
            let app = &app;
            futures_util::future::join_all((created..(created + 6).min(n)).map(|i| async move {
                let id = app.create_org(&format!("org-{i:04}"), "basic").await;
                if i % 5 == 0 {
                    let t = app.tenant_token(&id, Role::Service);
                    app.record(&t, "bookings", &(80 + i % 40).to_string()).await;
                }
            }))
            .await;
            created = (created + 6).min(n);
        }
        app.state
            .engine
            .materialize_period(Period::current())
            .await
            .unwrap();
        app.ok(&platform, query, json!({})).await;
        let before = app.state.statements.get();
        let data = app.ok(&platform, query, json!({})).await;
        costs.push(app.state.statements.get() - before);
        assert_eq!(data["usageSummaries"]["totalCount"], n / 5);
        assert_eq!(
            data["usageSummaries"]["nodes"].as_array().unwrap().len(),
            (n / 5).min(50) as usize
        );
    }
    assert_eq!(
        costs[0], costs[1],
        "statements for 100 vs 1,000 organizations: {costs:?}"
    );
    assert!(costs[1] <= 12, "a page costs {} statements", costs[1]);
    if app.state.engine.db.is_postgres() {
        tollgate::store::execute(&app.state.engine.db, "ANALYZE", vec![])
            .await
            .unwrap();
        let q = tollgate::store::utilization::PageQuery {
            period: Period::current(),
            subject: tollgate::store::utilization::Subject::Metric("bookings"),
            min_utilization_pct: Some(80.0),
            exceeded_only: false,
            order: tollgate::store::utilization::Order::UtilizationDesc,
            source: tollgate::store::utilization::Source::Index,
        };
        let plan = tollgate::store::utilization::explain_page(&app.state.engine.db, &q, 51)
            .await
            .unwrap();
        assert!(plan.contains("idx_usage_utilization_page"), "{plan}");
        assert!(!plan.contains("Seq Scan on usage_utilization"), "{plan}");
    }
}
both_engines!(
    platform_page_cost,
    super::a_platform_page_costs_constant_statements
);

/// recompute finds a drifted index entry (and a missing one), and repairs them.
async fn recompute_checks_the_index(app: TestApp) {
    let org = app.create_org("acme", "basic").await;
    app.record(&app.tenant_token(&org, Role::Service), "bookings", "85")
        .await;
    let id = OrganizationId(org.parse().unwrap());
    let engine = &app.state.engine;
    assert!(
        engine
            .recompute_org(id, None, false)
            .await
            .unwrap()
            .differences
            .is_empty()
    );
    app.sql("UPDATE usage_utilization SET utilization_pct = 1 WHERE metric_code = 'bookings'")
        .await;
    app.sql("DELETE FROM usage_utilization WHERE metric_code = 'staff'")
        .await;
    app.sql("UPDATE organization_usage SET peak_utilization_pct = NULL")
        .await;
    let report = engine.recompute_org(id, None, false).await.unwrap();
    assert_eq!(report.differences.len(), 1, "{:?}", report.differences);
    assert_eq!(report.differences[0].subject, "utilization index");
    engine.recompute_org(id, None, true).await.unwrap();
    assert!(
        engine
            .recompute_org(id, None, false)
            .await
            .unwrap()
            .differences
            .is_empty()
    );
    let data = app
        .ok(
            &app.platform_token(),
            "{ usageSummaries(metric: \"bookings\", minUtilizationPct: 85) { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(data["usageSummaries"]["totalCount"], 1);
}
both_engines!(recompute_index, super::recompute_checks_the_index);

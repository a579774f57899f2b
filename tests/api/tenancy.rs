//! Tenant scope: platform-only fields are invisible and unknown to tenants; a foreign id answers
//! exactly as a random one; each role gets what the access table gives it.

use serde_json::json;
use tollgate::domain::Role;

use crate::both_engines;
use crate::helpers::{TestApp, code};

const PLATFORM_FIELDS: [(&str, &str); 6] = [
    ("Query", "organizations"),
    ("Mutation", "grantCredit"),
    ("Mutation", "adjustUsage"),
    ("Mutation", "resetUsage"),
    ("Mutation", "createOrganization"),
    ("Mutation", "upsertPlan"),
];

async fn root_fields(app: &TestApp, token: &str, ty: &str) -> Vec<String> {
    let data = app
        .ok(
            token,
            "query($t: String!) { __type(name: $t) { fields { name } } }",
            json!({ "t": ty }),
        )
        .await;
    data["__type"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn platform_fields_are_invisible_to_tenants(app: TestApp) {
    let a = app.create_org("alpha", "basic").await;
    let owner = app.tenant_token(&a, Role::Owner);
    let platform = app.platform_token();
    for (ty, field) in PLATFORM_FIELDS {
        assert!(
            !root_fields(&app, &owner, ty)
                .await
                .contains(&field.to_owned()),
            "tenant sees {ty}.{field}"
        );
        assert!(
            root_fields(&app, &platform, ty)
                .await
                .contains(&field.to_owned()),
            "platform lacks {ty}.{field}"
        );
    }
    // The input types of platform-only mutations are hidden too.
    let data = app
        .ok(
            &owner,
            "{ __type(name: \"GrantCreditInput\") { name } }",
            json!({}),
        )
        .await;
    assert!(data["__type"].is_null(), "{data}");

    // Unknown to validation: the same answer as a field that does not exist at all.
    let (s1, hidden) = app
        .post(Some(&owner), "{ organizations { totalCount } }", json!({}))
        .await;
    let (s2, missing) = app
        .post(Some(&owner), "{ organizationz { totalCount } }", json!({}))
        .await;
    assert_eq!(s1, s2);
    assert_eq!(
        hidden["errors"][0]["message"],
        "Unknown field \"organizations\" on type \"Query\"."
    );
    assert_eq!(
        missing["errors"][0]["message"],
        "Unknown field \"organizationz\" on type \"Query\"."
    );
    assert_eq!(
        hidden["errors"][0]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>(),
        missing["errors"][0]
            .as_object()
            .unwrap()
            .keys()
            .collect::<Vec<_>>()
    );
    // Hidden behind a fragment or an inline fragment: still unknown.
    let (_, via_fragment) = app
        .post(
            Some(&owner),
            "query { ...F } fragment F on Query { organizations { totalCount } }",
            json!({}),
        )
        .await;
    assert_eq!(
        via_fragment["errors"][0]["message"],
        "Unknown field \"organizations\" on type \"Query\"."
    );
    let (_, via_inline) = app
        .post(Some(&owner), "mutation { ... on Mutation { grantCredit(input: {organizationId: \"x\", metric: \"bookings\", quantity: \"1\", reason: \"r\"}) { used } } }", json!({}))
        .await;
    assert_eq!(
        via_inline["errors"][0]["message"],
        "Unknown field \"grantCredit\" on type \"Mutation\"."
    );

    // The platform team sees every organization.
    let b = app.create_org("beta", "growth").await;
    let data = app
        .ok(
            &platform,
            "{ organizations(first: 10) { totalCount nodes { id slug } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["organizations"]["totalCount"], 2);
    let ids: Vec<&str> = data["organizations"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&a.as_str()) && ids.contains(&b.as_str()));
}
both_engines!(
    invisible_fields,
    super::platform_fields_are_invisible_to_tenants
);

async fn foreign_ids_answer_like_missing_ones(app: TestApp) {
    let a = app.create_org("alpha", "basic").await;
    let b = app.create_org("beta", "basic").await;
    let ta = app.tenant_token(&a, Role::Admin);
    // The other tenant's state is in the server's entitlement cache: it must not leak from there.
    let tb = app.tenant_token(&b, Role::Viewer);
    app.ok(
        &tb,
        "{ organization { usage { hasExceededLimits } } }",
        json!({}),
    )
    .await;
    let q = "query($id: ID) { organization(id: $id) { id name } }";
    let (s_foreign, foreign) = app.post(Some(&ta), q, json!({ "id": b })).await;
    let (s_random, random) = app
        .post(
            Some(&ta),
            q,
            json!({ "id": uuid::Uuid::new_v4().to_string() }),
        )
        .await;
    let (s_garbage, garbage) = app.post(Some(&ta), q, json!({ "id": "not-a-uuid" })).await;
    assert_eq!(s_foreign, s_random);
    assert_eq!(foreign, random);
    assert_eq!(foreign, garbage);
    assert_eq!(s_random, s_garbage);
    assert_eq!(code(&foreign), Some("NOT_FOUND"));
    assert!(foreign["data"]["organization"].is_null());
    // Own organization, by id and by default.
    let own = app.ok(&ta, q, json!({ "id": a })).await;
    assert_eq!(own["organization"]["id"], a.as_str());
    let default = app.ok(&ta, "{ organization { id } }", json!({})).await;
    assert_eq!(default["organization"]["id"], a.as_str());

    // Every other tenant-facing entry point treats the foreign id the same way.
    for (query, vars) in [
        (
            "query($id: ID) { checkEntitlement(organizationId: $id, metric: \"bookings\") { allowed } }",
            json!({ "id": b }),
        ),
        (
            "query($id: ID) { usageAlerts(organizationId: $id) { nodes { id } } }",
            json!({ "id": b }),
        ),
        (
            "mutation($id: ID) { recordUsage(input: {organizationId: $id, metric: \"bookings\", quantity: \"1\"}) { accepted } }",
            json!({ "id": b }),
        ),
        (
            "mutation($id: ID) { changePlan(input: {organizationId: $id, planCode: \"growth\"}) { id } }",
            json!({ "id": b }),
        ),
        (
            "mutation($id: ID) { reverseUsage(input: {organizationId: $id, reference: \"booking:1\"}) { reversedEvents { id } } }",
            json!({ "id": b }),
        ),
    ] {
        let body = app.gql(&ta, query, vars).await;
        assert_eq!(code(&body), Some("NOT_FOUND"), "{query}: {body}");
        assert_eq!(body["errors"][0]["message"], "organization not found");
    }
    // Nothing was recorded for the other tenant.
    let tb = app.tenant_token(&b, Role::Viewer);
    let data = app
        .ok(
            &tb,
            "{ organization { usage { metric(code: \"bookings\") { used } } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["organization"]["usage"]["metric"]["used"], "0");
    // A tenant's summaries list only its own row.
    let data = app
        .ok(
            &ta,
            "{ usageSummaries { totalCount nodes { organization { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(data["usageSummaries"]["totalCount"], 1);
    assert_eq!(
        data["usageSummaries"]["nodes"][0]["organization"]["id"],
        a.as_str()
    );
}
both_engines!(foreign_ids, super::foreign_ids_answer_like_missing_ones);

async fn roles_follow_the_access_table(app: TestApp) {
    let a = app.create_org("alpha", "basic").await;
    let record =
        "mutation { recordUsage(input: {metric: \"bookings\", quantity: \"1\"}) { accepted } }";
    let change = "mutation { changePlan(input: {planCode: \"growth\"}) { changeType } }";
    for role in [Role::Viewer, Role::Member] {
        let t = app.tenant_token(&a, role);
        assert_eq!(
            code(&app.gql(&t, record, json!({})).await),
            Some("FORBIDDEN"),
            "{role:?} record"
        );
        assert_eq!(
            code(&app.gql(&t, change, json!({})).await),
            Some("FORBIDDEN"),
            "{role:?} change"
        );
        // Reads are fine.
        app.ok(
            &t,
            "{ organization { name usage { hasExceededLimits } } }",
            json!({}),
        )
        .await;
    }
    let service = app.tenant_token(&a, Role::Service);
    assert_eq!(
        app.ok(&service, record, json!({})).await["recordUsage"]["accepted"],
        true
    );
    assert_eq!(
        code(&app.gql(&service, change, json!({})).await),
        Some("FORBIDDEN")
    );
    let owner = app.tenant_token(&a, Role::Owner);
    assert_eq!(
        app.ok(&owner, change, json!({})).await["changePlan"]["changeType"],
        "UPGRADE"
    );
}
both_engines!(roles, super::roles_follow_the_access_table);

async fn a_page_of_organizations_costs_constant_statements(app: TestApp) {
    let platform = app.platform_token();
    let query = "query($n: Int) { organizations(first: $n) { totalCount nodes { name plan { name limits { metric { code } included } } \
                 usage { hasExceededLimits metrics { metric { code } used allowance utilizationPct } } } } }";
    for i in 0..100 {
        let id = app
            .create_org(
                &format!("org-{i:03}"),
                if i % 2 == 0 { "basic" } else { "growth" },
            )
            .await;
        if i % 10 == 0 {
            let t = app.tenant_token(&id, Role::Service);
            app.record(&t, "bookings", "5").await;
        }
    }
    let mut costs = Vec::new();
    for n in [10, 100] {
        let before = app.state.statements.get();
        let data = app.ok(&platform, query, json!({ "n": n })).await;
        costs.push(app.state.statements.get() - before);
        assert_eq!(
            data["organizations"]["nodes"].as_array().unwrap().len(),
            n as usize
        );
    }
    assert_eq!(
        costs[0], costs[1],
        "statements for 10 vs 100 organizations: {costs:?}"
    );
    assert!(costs[1] <= 15, "a page costs {} statements", costs[1]);
}
// The entitlement cache off: every organization's summary and plan is read from the database, so
// what the test counts is the loaders' batching, not what a previous page left in memory.
both_engines!(
    dataloaders,
    super::a_page_of_organizations_costs_constant_statements,
    &["--entitlement-cache-ttl", "0s"]
);

/// Subscriptions' rounds queued together share one read (`domain/usage/rounds.rs`): each round is
/// answered with its own organization's summary, never a neighbour's, and a round its caller's scope
/// does not allow with nothing.
async fn rounds_read_together_answer_each_its_own(app: TestApp) {
    use tollgate::domain::{OrganizationId, Scope};
    let mut orgs = Vec::new();
    for i in 0..6 {
        let id = app.create_org(&format!("round-{i}"), "growth").await;
        let service = app.tenant_token(&id, Role::Service);
        app.record(&service, "bookings", &(i + 1).to_string()).await;
        orgs.push(OrganizationId(id.parse().unwrap()));
    }
    let engine = &app.state.engine;
    // Asked at once, several of each, so that reads gather rounds of several organizations.
    let asks: Vec<(usize, OrganizationId)> = (0..36).map(|n| (n % 6, orgs[n % 6])).collect();
    let answers = futures_util::future::join_all(
        asks.iter()
            .map(|&(_, org)| engine.round_summary(Scope::Tenant(org), org)),
    )
    .await;
    for ((i, org), answer) in asks.iter().zip(answers) {
        let summary = answer.unwrap().expect("the organization's summary");
        assert_eq!(summary.org.id, org.0);
        let bookings = summary
            .metrics
            .iter()
            .find(|m| m.metric == "bookings")
            .unwrap();
        assert_eq!(bookings.state.used.scaled(), (*i as i64 + 1) * 10_000);
    }
    let platform = engine
        .round_summary(Scope::Platform, orgs[2])
        .await
        .unwrap();
    assert_eq!(platform.map(|s| s.org.id), Some(orgs[2].0));
    let foreign = engine
        .round_summary(Scope::Tenant(orgs[0]), orgs[1])
        .await
        .unwrap();
    assert!(foreign.is_none(), "a round outside its caller's scope");
}
both_engines!(rounds, super::rounds_read_together_answer_each_its_own);

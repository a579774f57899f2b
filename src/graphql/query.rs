//! Query root.

use async_graphql::connection::{Connection, Edge, EmptyFields};
use async_graphql::{Context, ID, Object, Result};
use chrono::{DateTime, Utc};
use std::sync::Arc;

use super::loaders::UsageKey;
use super::scalars::{Date, Dec};
use super::types::{
    EntitlementCheck, Metric, Organization, OrganizationStatus, Plan, PlanChange, TotalCount,
    UsageAlert, UsageSummary, UsageSummaryOrder, Viewer,
};
use super::{connection_args, cursor_decode, cursor_encode, page_of, platform_only, request_ctx};
use crate::domain::access::{self, Action};
use crate::domain::{MetricCode, OrganizationId, Period};
use crate::error::AppError;
use crate::store;

#[derive(Default)]
pub struct CoreQuery;

/// Where a page of `usageSummaries` by utilization ended: the metric it ordered on (None: the
/// highest), the last row's utilization (None: past the organizations with one) and its id.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UtilizationCursor {
    metric: Option<String>,
    utilization: Option<f64>,
    id: uuid::Uuid,
}

/// Primes the request's loaders for a page of organizations: their plans in one batch, and, when the
/// page asks for `usage` of the current period, every summary at once. The cost of a page stays a
/// constant number of statements however the loaders' batches would have fallen.
async fn prime(
    ctx: &Context<'_>,
    orgs: &[entity::organization::Model],
    usage_path: &[&str],
) -> Result<()> {
    let rc = request_ctx(ctx)?;
    let mut plan_ids: Vec<uuid::Uuid> = orgs.iter().filter_map(|o| o.plan_id).collect();
    plan_ids.sort();
    plan_ids.dedup();
    rc.loaders.load_many(plan_ids).await?;
    let mut look = ctx.look_ahead();
    for f in usage_path {
        look = look.field(f);
    }
    let wants_current = !usage_path.is_empty()
        && look.exists()
        && look
            .selection_fields()
            .iter()
            .all(|f| f.arguments().map(|a| a.is_empty()).unwrap_or(false));
    if wants_current {
        let period = Period::current();
        let summaries = rc
            .engine
            .summaries(&rc.engine.db, rc.scope(), orgs.to_vec(), period)
            .await?;
        rc.loaders
            .feed_many(summaries.into_iter().map(|s| {
                (
                    UsageKey(OrganizationId(s.org.id), period.start),
                    Arc::new(s),
                )
            }))
            .await;
    }
    Ok(())
}

#[Object]
impl CoreQuery {
    /// Who the caller is.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<Viewer> {
        Ok(Viewer(request_ctx(ctx)?.viewer()?.clone()))
    }

    /// One organization, by default the caller's own. Another tenant's id answers null with a NOT_FOUND error, exactly as a missing one does.
    async fn organization(
        &self,
        ctx: &Context<'_>,
        id: Option<ID>,
    ) -> Result<Option<Organization>> {
        let rc = request_ctx(ctx)?;
        let viewer = rc.viewer()?;
        let org = access::target_org(viewer, id.as_ref().map(|i| i.as_str()))?;
        Ok(Some(Organization(
            rc.engine.readable_org(viewer, org).await?,
        )))
    }

    /// Every organization. Platform team only: invisible in a tenant's introspection.
    #[graphql(
        visible = "platform_only",
        complexity = "super::page_complexity(first, child_complexity)"
    )]
    async fn organizations(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<OrganizationStatus>,
        search: Option<String>,
    ) -> Result<Connection<String, Organization, TotalCount, EmptyFields>> {
        let rc = request_ctx(ctx)?;
        access::require_platform(rc.viewer()?)?;
        let limit = connection_args(rc, first)?;
        let after_slug = after.as_deref().map(cursor_decode::<String>).transpose()?;
        let search = search.map(|s| s.trim().to_owned());
        if let Some(s) = &search
            && (s.chars().count() > 200 || s.chars().any(char::is_control))
        {
            return Err(AppError::bad_input(
                "search is at most 200 characters, without control characters",
            )
            .into());
        }
        let filter = store::orgs::OrgFilter {
            status: status.map(Into::into),
            search,
        };
        let db = &rc.engine.db;
        let scope = rc.scope();
        let rows = store::orgs::page(db, scope, &filter, after_slug.as_deref(), limit as u64 + 1)
            .await
            .map_err(AppError::from)?;
        let total = store::orgs::count(db, scope, &filter)
            .await
            .map_err(AppError::from)?;
        let page: Vec<_> = rows.iter().take(limit).cloned().collect();
        prime(ctx, &page, &["nodes", "usage"]).await?;
        prime(ctx, &page, &["edges", "node", "usage"]).await?;
        Ok(page_of(
            rows,
            limit,
            after.is_some(),
            TotalCount { total },
            |o| cursor_encode(&o.slug),
            Organization,
        ))
    }

    /// Platform team only (invisible to tenants): the audit rows of a plan's changes, newest first: who changed it, why, and its definition before and after.
    #[graphql(visible = "platform_only")]
    async fn plan_history(&self, ctx: &Context<'_>, code: String) -> Result<Vec<PlanChange>> {
        let rc = request_ctx(ctx)?;
        access::require_platform(rc.viewer()?)?;
        let plan = store::catalog::plan_by_code(&rc.engine.db, code.trim())
            .await
            .map_err(AppError::from)?
            .ok_or_else(|| AppError::not_found("plan"))?;
        Ok(store::catalog::plan_history(&rc.engine.db, plan.id)
            .await
            .map_err(AppError::from)?
            .into_iter()
            .map(PlanChange)
            .collect())
    }

    async fn plans(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(false)")] include_inactive: Option<bool>,
    ) -> Result<Vec<Plan>> {
        let rc = request_ctx(ctx)?;
        rc.viewer()?;
        let plans = store::catalog::plans(&rc.engine.db, include_inactive.unwrap_or(false))
            .await
            .map_err(AppError::from)?;
        let ids: Vec<uuid::Uuid> = plans.iter().map(|p| p.id).collect();
        let mut loaded = rc.loaders.load_many(ids.iter().copied()).await?;
        Ok(ids
            .iter()
            .filter_map(|id| loaded.remove(id))
            .map(Plan)
            .collect())
    }

    async fn metrics(&self, ctx: &Context<'_>) -> Result<Vec<Metric>> {
        let rc = request_ctx(ctx)?;
        rc.viewer()?;
        Ok(rc
            .engine
            .catalog()
            .await?
            .metrics
            .iter()
            .cloned()
            .map(Metric)
            .collect())
    }

    /// The seed's organization_usage_summary: one row per visible organization for the period containing `period` (default: the current one). Tenants see only their own row.
    /// `minUtilizationPct` keeps the organizations whose utilization is at least that percent and `exceededOnly` those past an allowance: of `metric` when given (an unknown metric is BAD_USER_INPUT), otherwise of any limited metric (the highest utilization). Utilization is used / allowance * 100 unrounded; an allowance of zero reads 100 once something is used, 0 before (as `utilizationPct` shows); an organization whose plan does not limit the metric (or anything) has none and is left out by either filter.
    /// `orderBy` NAME (the default) orders by slug; UTILIZATION_DESC by that utilization, highest first, ties by organization id, organizations without one last (by id). A cursor is valid only for the order (and metric) that produced it; another is BAD_USER_INPUT.
    /// The current period's filtered pages read an index that every write keeps current (not every organization's counters); by UTILIZATION_DESC their cost does not grow with the number of organizations.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    #[allow(clippy::too_many_arguments)]
    async fn usage_summaries(
        &self,
        ctx: &Context<'_>,
        period: Option<Date>,
        min_utilization_pct: Option<f64>,
        exceeded_only: Option<bool>,
        first: Option<i32>,
        after: Option<String>,
        metric: Option<String>,
        order_by: Option<UsageSummaryOrder>,
    ) -> Result<Connection<String, UsageSummary, TotalCount, EmptyFields>> {
        use store::utilization::{After, Order, PageQuery, Source, Subject};
        let rc = request_ctx(ctx)?;
        rc.viewer()?;
        let limit = connection_args(rc, first)?;
        if min_utilization_pct.is_some_and(|p| !p.is_finite()) {
            return Err(AppError::bad_input("minUtilizationPct must be a number").into());
        }
        let metric = match metric.as_deref() {
            Some(m) => {
                let code = MetricCode::parse(m)?;
                if !rc.engine.catalog().await?.kinds.contains_key(code.as_str()) {
                    return Err(AppError::bad_input(format!("unknown metric {m:?}")).into());
                }
                Some(code.as_str().to_owned())
            }
            None => None,
        };
        let order: Order = order_by.unwrap_or(UsageSummaryOrder::Name).into();
        let after_key = match (after.as_deref(), order) {
            (None, _) => None,
            (Some(c), Order::Name) => Some(After::Slug(cursor_decode::<String>(c)?)),
            (Some(c), Order::UtilizationDesc) => {
                let cursor = cursor_decode::<UtilizationCursor>(c)?;
                if cursor.metric != metric {
                    return Err(AppError::bad_input(
                        "the cursor belongs to a page of another metric",
                    )
                    .into());
                }
                Some(After::Utilization(cursor.utilization, cursor.id))
            }
        };
        let period = period
            .map(|d| Period::containing(d.0))
            .unwrap_or_else(Period::current);
        // The index holds the current period once every organization is in it; any other period,
        // and the current one until then, is computed from the counters (the same answers).
        let source = if period == Period::current() && rc.engine.index_complete(period).await? {
            Source::Index
        } else {
            Source::Computed
        };
        let query = PageQuery {
            period,
            subject: metric.as_deref().map_or(Subject::Peak, Subject::Metric),
            min_utilization_pct,
            exceeded_only: exceeded_only.unwrap_or(false),
            order,
            source,
        };
        let db = &rc.engine.db;
        let scope = rc.scope();
        let rows =
            store::utilization::page(db, scope, &query, after_key.as_ref(), limit as u64 + 1)
                .await
                .map_err(AppError::from)?;
        // totalCount counts the whole matching range: read only when asked for, so that a page
        // without it costs the page alone.
        let total = if ctx.look_ahead().field("totalCount").exists() {
            store::utilization::count(db, scope, &query)
                .await
                .map_err(AppError::from)?
        } else {
            0
        };
        let has_next = rows.len() > limit;
        let rows: Vec<_> = rows.into_iter().take(limit).collect();
        let cursors: Vec<String> = rows
            .iter()
            .map(|r| match order {
                Order::Name => cursor_encode(&r.org.slug),
                Order::UtilizationDesc => cursor_encode(&UtilizationCursor {
                    metric: metric.clone(),
                    utilization: r.utilization_pct,
                    id: r.org.id,
                }),
            })
            .collect();
        let orgs: Vec<_> = rows.into_iter().map(|r| r.org).collect();
        // Plans only: the summaries themselves are computed below in one pass.
        prime(ctx, &orgs, &[]).await?;
        let summaries = rc.engine.summaries(db, scope, orgs, period).await?;
        let mut conn =
            Connection::with_additional_fields(after.is_some(), has_next, TotalCount { total });
        conn.edges.extend(
            summaries
                .into_iter()
                .zip(cursors)
                .map(|(s, c)| Edge::new(c, UsageSummary(Arc::new(s)))),
        );
        Ok(conn)
    }

    /// Would recording `quantity` more of `metric` now be allowed, and what would remain? Records nothing.
    /// For a GAUGE too it is `quantity` more than the current reading (can one more venue be added?).
    async fn check_entitlement(
        &self,
        ctx: &Context<'_>,
        organization_id: Option<ID>,
        metric: String,
        quantity: Option<Dec>,
    ) -> Result<EntitlementCheck> {
        let rc = request_ctx(ctx)?;
        let viewer = rc.viewer()?;
        let (usage, new_used, allowed, reason) = rc
            .engine
            .check(
                viewer,
                organization_id.as_ref().map(|i| i.as_str()),
                &metric,
                quantity.map(|q| q.0),
            )
            .await?;
        Ok(EntitlementCheck {
            usage,
            new_used,
            allowed,
            reason,
        })
    }

    /// Alerts already raised, newest first, so a client that reconnects can catch up.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn usage_alerts(
        &self,
        ctx: &Context<'_>,
        organization_id: Option<ID>,
        since: Option<DateTime<Utc>>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, UsageAlert, EmptyFields, EmptyFields>> {
        let rc = request_ctx(ctx)?;
        let viewer = rc.viewer()?;
        let limit = connection_args(rc, first)?;
        let since = since
            .map(|s| crate::domain::bounded_instant("since", s))
            .transpose()?;
        let org = match (organization_id, viewer.platform) {
            (Some(id), _) => Some(OrganizationId(
                access::authorize(
                    &rc.engine.db,
                    viewer,
                    OrganizationId::parse(&id)?,
                    Action::Read,
                )
                .await?
                .id,
            )),
            (None, true) => viewer.org_id,
            (None, false) => Some(access::target_org(viewer, None)?),
        };
        let after_id = after
            .as_deref()
            .map(cursor_decode::<uuid::Uuid>)
            .transpose()?;
        let rows = store::ledger::alerts_page(
            &rc.engine.db,
            rc.scope(),
            org,
            since,
            after_id,
            limit as u64 + 1,
        )
        .await
        .map_err(AppError::from)?;
        Ok(page_of(
            rows,
            limit,
            after.is_some(),
            EmptyFields,
            |a| cursor_encode(&a.id),
            |a| UsageAlert(Arc::new(a)),
        ))
    }
}

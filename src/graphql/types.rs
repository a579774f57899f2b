//! GraphQL output types. They wrap store models and domain values; the tables are not the API.

use std::sync::Arc;

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::dataloader::DataLoader;
use async_graphql::{Context, Enum, ID, Json, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{metric, organization, subscription_history, usage_alert, usage_event};
use rust_decimal::Decimal;

use super::loaders::{Loaders, PlanWithLimits, UsageKey};
use super::scalars::{Date, Dec};
use super::{RequestCtx, connection_args, cursor_decode, cursor_encode};
use crate::domain::limits::MetricState;
use crate::domain::usage::{MetricUsage as DomainMetricUsage, UsageSummary as DomainSummary};
use crate::domain::{Amount, OrganizationId, Period};
use crate::error::AppError;
use crate::store;

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::Role")]
pub enum Role {
    Owner,
    Admin,
    Member,
    Viewer,
    Service,
    Customer,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "entity::enums::OrganizationStatus")]
pub enum OrganizationStatus {
    Trialing,
    Active,
    PastDue,
    Cancelled,
    Suspended,
}

/// The order of `usageSummaries`.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::store::utilization::Order")]
pub enum UsageSummaryOrder {
    /// Highest utilization first (of `metric`, or the organization's highest over its limited
    /// metrics), ties by organization id; organizations without one (nothing limited) last, by id.
    UtilizationDesc,
    /// By slug (the default).
    Name,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "entity::enums::MetricKind")]
pub enum MetricKind {
    Counter,
    Gauge,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "entity::enums::Enforcement")]
pub enum Enforcement {
    Soft,
    Hard,
    Overage,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "entity::enums::ChangeType")]
pub enum ChangeType {
    Upgrade,
    Downgrade,
    Cancelled,
    Reactivated,
    TrialStarted,
    TrialEnded,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "entity::enums::AlertKind")]
pub enum AlertKind {
    NearLimit,
    LimitExceeded,
    OverageStarted,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "entity::enums::UsageEventKind")]
pub enum UsageEventKind {
    Usage,
    Credit,
    Adjustment,
    Reversal,
    Reset,
}

fn loader<'a>(
    ctx: &'a Context<'_>,
) -> Result<&'a DataLoader<Loaders, async_graphql::dataloader::HashMapCache>> {
    Ok(&*ctx.data::<RequestCtx>()?.loaders)
}

/// A metric of the catalogue, which the engine holds in memory (no loader round, no statement).
pub(super) async fn load_metric(ctx: &Context<'_>, code: &str) -> Result<Metric> {
    let catalog = ctx.data::<RequestCtx>()?.engine.catalog().await?;
    catalog
        .metrics
        .iter()
        .find(|m| m.code == code)
        .cloned()
        .map(Metric)
        .ok_or_else(|| {
            AppError::internal(anyhow::anyhow!("metric {code} missing from catalogue")).into()
        })
}

pub(super) async fn load_org(ctx: &Context<'_>, id: uuid::Uuid) -> Result<Organization> {
    loader(ctx)?
        .load_one(OrganizationId(id))
        .await?
        .map(Organization)
        .ok_or_else(|| AppError::not_found("organization").into())
}

async fn load_plan(ctx: &Context<'_>, id: Option<uuid::Uuid>) -> Result<Option<Plan>> {
    match id {
        Some(id) => Ok(loader(ctx)?.load_one(id).await?.map(Plan)),
        None => Ok(None),
    }
}

pub struct Viewer(pub crate::domain::Viewer);

#[Object]
impl Viewer {
    async fn user_id(&self) -> &str {
        &self.0.sub
    }
    async fn role(&self) -> Option<Role> {
        self.0.role.map(Into::into)
    }
    async fn organization(&self, ctx: &Context<'_>) -> Result<Option<Organization>> {
        match self.0.org_id {
            Some(id) => Ok(loader(ctx)?.load_one(id).await?.map(Organization)),
            None => Ok(None),
        }
    }
    async fn is_platform_team(&self) -> bool {
        self.0.platform
    }
    /// The Customer of a CUSTOMER token (its organization's customer whose externalId is the token's sub).
    async fn customer(&self, ctx: &Context<'_>) -> Result<Option<super::memberships::Customer>> {
        super::memberships::viewer_customer(ctx).await
    }
}

/// An audit row of a plan's change (platform team only).
pub struct PlanChange(pub entity::plan_history::Model);

#[Object]
impl PlanChange {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn plan_code(&self) -> &str {
        &self.0.plan_code
    }
    /// The `sub` of the platform-team member who made the change.
    async fn actor(&self) -> &str {
        &self.0.actor
    }
    async fn reason(&self) -> &str {
        &self.0.reason
    }
    /// The definition before the change (null when the plan was created): name, rank, priceMonthly, currency, trialDays, applicationFeePct, active and limits, amounts as decimal strings.
    async fn before(&self) -> Option<Json<serde_json::Value>> {
        self.0
            .before
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .map(Json)
    }
    /// The definition after the change.
    async fn after(&self) -> Json<serde_json::Value> {
        Json(serde_json::from_str(&self.0.after).unwrap_or_default())
    }
    async fn created_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.0.created_at
    }
}

#[derive(Clone)]
pub struct Organization(pub organization::Model);

#[Object]
impl Organization {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn slug(&self) -> &str {
        &self.0.slug
    }
    async fn status(&self) -> OrganizationStatus {
        self.0.status.into()
    }
    async fn plan(&self, ctx: &Context<'_>) -> Result<Option<Plan>> {
        load_plan(ctx, self.0.plan_id).await
    }
    async fn trial_ends_at(&self) -> Option<DateTime<Utc>> {
        self.0.trial_ends_at
    }
    async fn current_period(&self) -> PeriodObj {
        PeriodObj(Period::current())
    }
    /// Usage for the period containing `period` (default: the current one).
    async fn usage(&self, ctx: &Context<'_>, period: Option<Date>) -> Result<UsageSummary> {
        let p = period
            .map(|d| Period::containing(d.0))
            .unwrap_or_else(Period::current);
        let rc = ctx.data::<RequestCtx>()?;
        let org = OrganizationId(self.0.id);
        // The current period straight from the entitlement cache, without a loader round.
        if p == Period::current()
            && let Some(s) = rc.engine.cached_summary(rc.scope(), org)
        {
            return Ok(UsageSummary(s));
        }
        loader(ctx)?
            .load_one(UsageKey(org, p.start))
            .await?
            .map(UsageSummary)
            .ok_or_else(|| AppError::not_found("organization").into())
    }
    /// One summary per period from `from` to `to`, oldest first (default: the last 12 periods).
    #[graphql(complexity = "super::history_complexity(from, to, child_complexity)")]
    async fn usage_history(
        &self,
        ctx: &Context<'_>,
        from: Option<Date>,
        to: Option<Date>,
    ) -> Result<Vec<UsageSummary>> {
        let periods = Period::history("usageHistory", from.map(|d| d.0), to.map(|d| d.0))?;
        let keys: Vec<UsageKey> = periods
            .iter()
            .map(|p| UsageKey(OrganizationId(self.0.id), p.start))
            .collect();
        let mut found = loader(ctx)?.load_many(keys.iter().copied()).await?;
        Ok(keys
            .iter()
            .filter_map(|k| found.remove(k))
            .map(UsageSummary)
            .collect())
    }
    /// The ledger: every event that changed a counter, newest first.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn usage_events(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        metric: Option<String>,
        kind: Option<UsageEventKind>,
    ) -> Result<Connection<String, UsageEvent, EmptyFields, EmptyFields>> {
        let rc = ctx.data::<RequestCtx>()?;
        let limit = connection_args(rc, first)?;
        let after_id = after
            .as_deref()
            .map(cursor_decode::<uuid::Uuid>)
            .transpose()?;
        if let Some(m) = &metric
            && !rc.engine.catalog().await?.kinds.contains_key(m.as_str())
        {
            return Err(
                AppError::bad_input(format!("unknown metric {}", crate::error::quote(m))).into(),
            );
        }
        let rows = store::ledger::events_page(
            &rc.engine.db,
            rc.scope(),
            OrganizationId(self.0.id),
            metric.as_deref(),
            kind.map(Into::into),
            after_id,
            limit as u64 + 1,
        )
        .await
        .map_err(AppError::from)?;
        Ok(super::page_of(
            rows,
            limit,
            after.is_some(),
            EmptyFields,
            |e| cursor_encode(&e.id),
            UsageEvent,
        ))
    }
    /// The seed's subscription_history, newest effective date first, then newest recorded first.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn subscription_history(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, SubscriptionChange, EmptyFields, EmptyFields>> {
        let rc = ctx.data::<RequestCtx>()?;
        let limit = connection_args(rc, first)?;
        let after_key = after
            .as_deref()
            .map(cursor_decode::<(chrono::NaiveDate, uuid::Uuid)>)
            .transpose()?;
        let rows = store::ledger::history_page(
            &rc.engine.db,
            rc.scope(),
            OrganizationId(self.0.id),
            after_key,
            limit as u64 + 1,
        )
        .await
        .map_err(AppError::from)?;
        Ok(super::page_of(
            rows,
            limit,
            after.is_some(),
            EmptyFields,
            |h| cursor_encode(&(h.effective_date, h.id)),
            SubscriptionChange,
        ))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// Overage billed (or to be billed) through Stripe, newest period first.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn overage_charges(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<super::money::OverageChargeStatus>,
    ) -> Result<Connection<String, super::money::OverageCharge, EmptyFields, EmptyFields>> {
        super::money::overage_charges(ctx, OrganizationId(self.0.id), first, after, status).await
    }
    /// Stripe Connect: the organization's connected account, through which its customers pay it.
    async fn membership_plans(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(false)")] include_inactive: Option<bool>,
    ) -> Result<Vec<super::memberships::MembershipPlan>> {
        super::memberships::membership_plans(
            ctx,
            OrganizationId(self.0.id),
            include_inactive.unwrap_or(false),
        )
        .await
    }
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn customers(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        search: Option<String>,
    ) -> Result<
        Connection<
            String,
            super::memberships::Customer,
            super::memberships::CustomerTotal,
            EmptyFields,
        >,
    > {
        super::memberships::customers(ctx, OrganizationId(self.0.id), first, after, search).await
    }
    async fn connect_account(&self, ctx: &Context<'_>) -> Result<super::money::ConnectAccount> {
        super::money::connect_account(ctx, OrganizationId(self.0.id)).await
    }
    async fn stripe_customer_id(&self) -> Option<&str> {
        self.0.stripe_customer_id.as_deref()
    }
    async fn stripe_subscription_id(&self) -> Option<&str> {
        self.0.stripe_subscription_id.as_deref()
    }
    /// The seed's organization_revenue_summary: one row per period from `from` to `to` (default: the last 12 periods) and currency, oldest first.
    #[graphql(complexity = "super::history_complexity(from, to, child_complexity)")]
    async fn revenue(
        &self,
        ctx: &Context<'_>,
        from: Option<Date>,
        to: Option<Date>,
    ) -> Result<Vec<super::money::RevenueSummary>> {
        super::money::revenue(ctx, &self.0, from, to).await
    }
    /// Payments made to this organization, newest first.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn payments(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, super::money::Payment, EmptyFields, EmptyFields>> {
        super::money::payments(ctx, OrganizationId(self.0.id), first, after).await
    }
}

pub struct PeriodObj(pub Period);

#[Object(name = "Period")]
impl PeriodObj {
    async fn start(&self) -> Date {
        Date(self.0.start)
    }
    async fn end(&self) -> Date {
        Date(self.0.end())
    }
}

#[derive(Clone)]
pub struct Plan(pub Arc<PlanWithLimits>);

#[Object]
impl Plan {
    async fn id(&self) -> ID {
        ID(self.0.plan.id.to_string())
    }
    /// The Stripe Price billing this plan. A Stripe subscription on this price puts its organization on this plan.
    async fn stripe_price_id(&self) -> Option<&str> {
        self.0.plan.stripe_price_id.as_deref()
    }
    async fn code(&self) -> &str {
        &self.0.plan.code
    }
    async fn name(&self) -> &str {
        &self.0.plan.name
    }
    /// Orders plans: a move to a higher rank is an UPGRADE, to a lower one a DOWNGRADE.
    async fn rank(&self) -> i32 {
        self.0.plan.rank
    }
    async fn price_monthly(&self) -> Dec {
        Dec::money(Amount::from_scaled(self.0.plan.price_monthly).to_decimal())
    }
    async fn currency(&self) -> &str {
        &self.0.plan.currency
    }
    async fn trial_days(&self) -> i32 {
        self.0.plan.trial_days
    }
    /// Share of each payment the platform keeps (Stripe Connect application fee), in percent.
    async fn application_fee_pct(&self) -> Dec {
        Dec::money(Amount::from_scaled(self.0.plan.application_fee_pct).to_decimal())
    }
    async fn active(&self) -> bool {
        self.0.plan.active
    }
    async fn limits(&self) -> Vec<PlanLimit> {
        self.0.limits.iter().cloned().map(PlanLimit).collect()
    }
}

pub struct PlanLimit(pub entity::plan_limit::Model);

#[Object]
impl PlanLimit {
    async fn metric(&self, ctx: &Context<'_>) -> Result<Metric> {
        load_metric(ctx, &self.0.metric_code).await
    }
    /// Included per period; null means unlimited.
    async fn included(&self) -> Option<Dec> {
        self.0
            .included
            .map(|v| Dec::qty(Amount::from_scaled(v).to_decimal()))
    }
    async fn enforcement(&self) -> Enforcement {
        self.0.enforcement.into()
    }
    /// Price of one unit past the allowance, when enforcement is OVERAGE.
    async fn overage_unit_price(&self) -> Option<Dec> {
        self.0
            .overage_unit_price
            .map(|v| Dec::money(Amount::from_scaled(v).to_decimal()))
    }
}

pub struct Metric(pub metric::Model);

#[Object]
impl Metric {
    async fn code(&self) -> &str {
        &self.0.code
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn kind(&self) -> MetricKind {
        self.0.kind.into()
    }
    async fn unit(&self) -> &str {
        &self.0.unit
    }
}

/// The seed's organization_usage row joined with its plan's limits.
pub struct UsageSummary(pub Arc<DomainSummary>);

#[Object]
impl UsageSummary {
    async fn organization(&self) -> Organization {
        Organization(self.0.org.clone())
    }
    async fn plan(&self, ctx: &Context<'_>) -> Result<Option<Plan>> {
        load_plan(ctx, self.0.org.plan_id).await
    }
    async fn period_start(&self) -> Date {
        Date(self.0.period.start)
    }
    async fn period_end(&self) -> Date {
        Date(self.0.period.end())
    }
    async fn metrics(&self) -> Vec<MetricUsage> {
        self.0.metrics.iter().cloned().map(MetricUsage).collect()
    }
    async fn metric(&self, code: String) -> Option<MetricUsage> {
        self.0
            .metrics
            .iter()
            .find(|m| m.metric == code)
            .cloned()
            .map(MetricUsage)
    }
    async fn has_exceeded_limits(&self) -> bool {
        self.0.has_exceeded()
    }
    /// Same shape as the seed: {"bookings": {"limit": 100, "actual": 120, "exceeded_by": 20}}; {} when nothing is exceeded.
    async fn exceeded_limits_details(&self) -> Json<serde_json::Value> {
        Json(self.0.exceeded_details())
    }
    async fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.0.updated_at
    }
}

#[derive(Clone)]
pub struct MetricUsage(pub DomainMetricUsage);

fn qty(d: Decimal) -> Dec {
    Dec::qty(d)
}

#[Object]
impl MetricUsage {
    async fn metric(&self, ctx: &Context<'_>) -> Result<Metric> {
        load_metric(ctx, &self.0.metric).await
    }
    async fn used(&self) -> Dec {
        qty(self.0.state.used())
    }
    /// From the plan; null means unlimited.
    async fn included(&self) -> Option<Dec> {
        self.0.state.rule.included.map(|i| qty(i.to_decimal()))
    }
    /// Credits granted for this period; they raise the allowance.
    async fn credits(&self) -> Dec {
        qty(self.0.state.credits.to_decimal())
    }
    /// included + credits; null means unlimited.
    async fn allowance(&self) -> Option<Dec> {
        self.0.state.allowance().map(qty)
    }
    /// max(allowance - used, 0); null means unlimited.
    async fn remaining(&self) -> Option<Dec> {
        self.0.state.remaining().map(qty)
    }
    /// used / allowance * 100, rounded to 2 places; null when unlimited. 1 of 1 is 100.00 and not exceeded.
    async fn utilization_pct(&self) -> Option<f64> {
        self.0.state.utilization_pct()
    }
    /// used > allowance.
    async fn exceeded(&self) -> bool {
        self.0.state.exceeded()
    }
    async fn exceeded_by(&self) -> Dec {
        qty(self.0.state.exceeded_by())
    }
    async fn overage_quantity(&self) -> Dec {
        qty(self.0.state.overage_quantity())
    }
    async fn overage_amount(&self) -> Dec {
        Dec::money(self.0.state.overage_amount())
    }
    async fn enforcement(&self) -> Enforcement {
        self.0.state.rule.enforcement.into()
    }
}

pub struct EntitlementCheck {
    pub usage: DomainMetricUsage,
    pub new_used: Decimal,
    pub allowed: bool,
    pub reason: Option<String>,
}

#[Object]
impl EntitlementCheck {
    /// False only when a HARD limit would refuse the quantity.
    async fn allowed(&self) -> bool {
        self.allowed
    }
    async fn metric(&self, ctx: &Context<'_>) -> Result<Metric> {
        load_metric(ctx, &self.usage.metric).await
    }
    /// Used so far in the current period, before the quantity.
    async fn used(&self) -> Dec {
        qty(self.usage.state.used())
    }
    async fn allowance(&self) -> Option<Dec> {
        self.usage.state.allowance().map(qty)
    }
    /// What would remain after recording the quantity, never negative; null means unlimited.
    async fn remaining(&self) -> Option<Dec> {
        self.usage
            .state
            .allowance()
            .map(|a| qty((a - self.new_used).max(Decimal::ZERO)))
    }
    /// used + quantity > allowance.
    async fn would_exceed(&self) -> bool {
        self.usage
            .state
            .allowance()
            .is_some_and(|a| self.new_used > a)
    }
    async fn overage_quantity(&self) -> Dec {
        qty(self.after().overage_quantity())
    }
    async fn overage_amount(&self) -> Dec {
        Dec::money(self.after().overage_amount())
    }
    async fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }
}

impl EntitlementCheck {
    /// The state the recording would leave.
    fn after(&self) -> MetricState {
        let mut s = self.usage.state;
        s.used = Amount::parse("used", self.new_used).unwrap_or(s.used);
        s
    }
}

pub struct SubscriptionChange(pub subscription_history::Model);

#[Object]
impl SubscriptionChange {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn organization(&self, ctx: &Context<'_>) -> Result<Organization> {
        load_org(ctx, self.0.organization_id).await
    }
    async fn old_plan(&self, ctx: &Context<'_>) -> Result<Option<Plan>> {
        load_plan(ctx, self.0.old_plan_id).await
    }
    async fn new_plan(&self, ctx: &Context<'_>) -> Result<Option<Plan>> {
        load_plan(ctx, self.0.new_plan_id).await
    }
    async fn change_type(&self) -> ChangeType {
        self.0.change_type.into()
    }
    async fn stripe_event_id(&self) -> Option<&str> {
        self.0.stripe_event_id.as_deref()
    }
    async fn stripe_subscription_id(&self) -> Option<&str> {
        self.0.stripe_subscription_id.as_deref()
    }
    async fn amount_paid(&self) -> Option<Dec> {
        self.0
            .amount_paid
            .map(|v| Dec::money(Amount::from_scaled(v).to_decimal()))
    }
    async fn effective_date(&self) -> Date {
        Date(self.0.effective_date)
    }
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn created_by(&self) -> Option<&str> {
        self.0.created_by.as_deref()
    }
}

pub struct UsageEvent(pub usage_event::Model);

#[Object]
impl UsageEvent {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn metric(&self, ctx: &Context<'_>) -> Result<Metric> {
        load_metric(ctx, &self.0.metric_code).await
    }
    async fn kind(&self) -> UsageEventKind {
        self.0.kind.into()
    }
    /// Signed change to the counter (for a GAUGE reading: the new value).
    async fn quantity(&self) -> Dec {
        qty(Amount::from_scaled(self.0.quantity).to_decimal())
    }
    async fn period_start(&self) -> Date {
        Date(self.0.period_start)
    }
    async fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }
    async fn reference(&self) -> Option<&str> {
        self.0.reference.as_deref()
    }
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    async fn actor(&self) -> Option<&str> {
        self.0.actor.as_deref()
    }
    async fn occurred_at(&self) -> DateTime<Utc> {
        self.0.occurred_at
    }
    async fn recorded_at(&self) -> DateTime<Utc> {
        self.0.recorded_at
    }
}

#[derive(Clone)]
pub struct UsageAlert(pub Arc<usage_alert::Model>);

fn pct(v: i64) -> f64 {
    use rust_decimal::prelude::ToPrimitive;
    Amount::from_scaled(v)
        .to_decimal()
        .to_f64()
        .unwrap_or_default()
}

#[Object]
impl UsageAlert {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn organization(&self, ctx: &Context<'_>) -> Result<Organization> {
        load_org(ctx, self.0.organization_id).await
    }
    async fn metric(&self, ctx: &Context<'_>) -> Result<Metric> {
        load_metric(ctx, &self.0.metric_code).await
    }
    async fn kind(&self) -> AlertKind {
        self.0.kind.into()
    }
    async fn threshold_pct(&self) -> f64 {
        pct(self.0.threshold_pct)
    }
    async fn used(&self) -> Dec {
        qty(Amount::from_scaled(self.0.used).to_decimal())
    }
    async fn allowance(&self) -> Dec {
        qty(Amount::from_scaled(self.0.allowance).to_decimal())
    }
    async fn utilization_pct(&self) -> f64 {
        pct(self.0.utilization_pct)
    }
    async fn period_start(&self) -> Date {
        Date(self.0.period_start)
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

#[derive(SimpleObject)]
pub struct RecordUsagePayload {
    /// False only when a HARD limit refused it; then nothing was recorded and event is null.
    pub accepted: bool,
    pub duplicate: bool,
    pub event: Option<UsageEvent>,
    pub usage: MetricUsage,
    /// Alerts this recording raised.
    pub alerts: Vec<UsageAlert>,
    pub rejection_reason: Option<String>,
}

#[derive(SimpleObject)]
pub struct ReverseUsagePayload {
    /// The REVERSAL events this call wrote; empty when everything was already reversed.
    pub reversed_events: Vec<UsageEvent>,
    pub usage: Vec<MetricUsage>,
}

pub struct TotalCount {
    pub total: u64,
}

#[Object]
impl TotalCount {
    async fn total_count(&self) -> i32 {
        i32::try_from(self.total).unwrap_or(i32::MAX)
    }
}

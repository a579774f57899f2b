//! Mutation root: thin resolvers over `domain`.

use std::sync::Arc;

use async_graphql::{Context, ID, InputObject, Object, Result};
use chrono::{DateTime, Utc};
use entity::enums::UsageEventKind;

use super::scalars::{Date, Dec};
use super::types::{
    Enforcement, MetricUsage, Organization, Plan, RecordUsagePayload, ReverseUsagePayload,
    SubscriptionChange, UsageAlert, UsageEvent, UsageSummary,
};
use super::{platform_only, request_ctx};
use crate::domain::usage::{Correction, RecordInput, RecordOutcome};
use crate::domain::{Period, orgs, plans};
use crate::error::AppError;

#[derive(InputObject)]
pub struct RecordUsageInput {
    /// Default: the caller's organization.
    organization_id: Option<ID>,
    metric: String,
    /// COUNTER: the amount to add (> 0). GAUGE: the new absolute value (>= 0).
    quantity: Dec,
    /// Within one organization a key is recorded once; a replay (the same metric and quantity) answers
    /// the first result with duplicate: true, and the key with another metric or quantity is a CONFLICT.
    idempotency_key: Option<String>,
    /// The caller's own handle, e.g. booking:123.
    reference: Option<String>,
    /// Default: now. Decides the period.
    occurred_at: Option<DateTime<Utc>>,
}

impl From<RecordUsageInput> for RecordInput {
    fn from(i: RecordUsageInput) -> Self {
        RecordInput {
            organization_id: i.organization_id.map(|id| id.0),
            metric: i.metric,
            quantity: i.quantity.0,
            idempotency_key: i.idempotency_key,
            reference: i.reference,
            occurred_at: i.occurred_at,
        }
    }
}

#[derive(InputObject)]
pub struct ReverseUsageInput {
    organization_id: Option<ID>,
    reference: String,
    reason: Option<String>,
}

#[derive(InputObject)]
#[graphql(visible = "platform_only")]
pub struct GrantCreditInput {
    organization_id: ID,
    metric: String,
    quantity: Dec,
    reason: String,
    period: Option<Date>,
}

#[derive(InputObject)]
#[graphql(visible = "platform_only")]
pub struct AdjustUsageInput {
    organization_id: ID,
    metric: String,
    quantity: Dec,
    reason: String,
    period: Option<Date>,
}

#[derive(InputObject)]
#[graphql(visible = "platform_only")]
pub struct ResetUsageInput {
    organization_id: ID,
    metric: Option<String>,
    reason: String,
    period: Option<Date>,
}

#[derive(InputObject)]
pub struct ChangePlanInput {
    organization_id: Option<ID>,
    plan_code: String,
    reason: Option<String>,
    /// The day the change was agreed: today (the default) or earlier, not before the organization
    /// existed. A change applies when it is made; a future date is refused.
    effective_date: Option<Date>,
}

#[derive(InputObject)]
pub struct SubscriptionActionInput {
    organization_id: Option<ID>,
    reason: Option<String>,
}

#[derive(InputObject)]
pub struct StartTrialInput {
    organization_id: Option<ID>,
    plan_code: Option<String>,
    reason: Option<String>,
}

#[derive(InputObject)]
#[graphql(visible = "platform_only")]
pub struct CreateOrganizationInput {
    name: String,
    slug: String,
    plan_code: Option<String>,
    start_trial: Option<bool>,
}

#[derive(InputObject)]
#[graphql(visible = "platform_only")]
pub struct UpsertPlanInput {
    code: String,
    name: String,
    /// Orders the plans (a change to a higher rank is an UPGRADE); each plan has its own.
    rank: i32,
    price_monthly: Dec,
    currency: Option<String>,
    trial_days: Option<i32>,
    application_fee_pct: Option<Dec>,
    active: Option<bool>,
    limits: Vec<PlanLimitInput>,
    /// The Stripe Price billing this plan: a Stripe subscription on this price puts its organization on this plan. Part of the definition: left out, the plan has none.
    stripe_price_id: Option<String>,
    /// Why the plan is created or changed, for its audit row (planHistory). Default: "plan created" or "plan updated".
    reason: Option<String>,
}

#[derive(InputObject)]
#[graphql(visible = "platform_only")]
pub struct PlanLimitInput {
    metric: String,
    included: Option<Dec>,
    enforcement: Enforcement,
    overage_unit_price: Option<Dec>,
}

fn payload(o: RecordOutcome) -> RecordUsagePayload {
    RecordUsagePayload {
        accepted: o.accepted,
        duplicate: o.duplicate,
        event: o.event.map(UsageEvent),
        usage: MetricUsage(o.usage),
        alerts: o
            .alerts
            .into_iter()
            .map(|a| UsageAlert(Arc::new(a)))
            .collect(),
        rejection_reason: o.rejection_reason,
    }
}

#[derive(Default)]
pub struct CoreMutation;

#[Object]
impl CoreMutation {
    /// Record usage. ADMIN, OWNER, SERVICE of the organization, or the platform team.
    async fn record_usage(
        &self,
        ctx: &Context<'_>,
        input: RecordUsageInput,
    ) -> Result<RecordUsagePayload> {
        let rc = request_ctx(ctx)?;
        Ok(payload(rc.engine.record(rc.viewer()?, input.into()).await?))
    }

    /// Many recordings in one request and one transaction: atomic. Malformed or unauthorized items, or an idempotency key reused for another recording, fail the whole request and record nothing; a HARD limit refuses items one by one (accepted: false).
    async fn record_usage_batch(
        &self,
        ctx: &Context<'_>,
        inputs: Vec<RecordUsageInput>,
    ) -> Result<Vec<RecordUsagePayload>> {
        let rc = request_ctx(ctx)?;
        let viewer = rc.viewer()?;
        if inputs.len() > rc.settings.max_record_batch {
            return Err(AppError::bad_input(format!(
                "a batch holds at most {} items",
                rc.settings.max_record_batch
            ))
            .into());
        }
        let outcomes = rc
            .engine
            .record_batch(viewer, inputs.into_iter().map(Into::into).collect())
            .await?;
        Ok(outcomes.into_iter().map(payload).collect())
    }

    /// Undo every USAGE event carrying `reference` (a booking cancelled before completion). Idempotent.
    /// GAUGE readings are not undone: a reading is not an amount, and the next reading replaces it.
    async fn reverse_usage(
        &self,
        ctx: &Context<'_>,
        input: ReverseUsageInput,
    ) -> Result<ReverseUsagePayload> {
        let rc = request_ctx(ctx)?;
        let (events, usage) = rc
            .engine
            .reverse(
                rc.viewer()?,
                input.organization_id.as_ref().map(|i| i.as_str()),
                &input.reference,
                input.reason.as_deref(),
            )
            .await?;
        Ok(ReverseUsagePayload {
            reversed_events: events.into_iter().map(UsageEvent).collect(),
            usage: usage.into_iter().map(MetricUsage).collect(),
        })
    }

    /// Platform team only (invisible to tenants): raise this period's allowance.
    #[graphql(visible = "platform_only")]
    async fn grant_credit(
        &self,
        ctx: &Context<'_>,
        input: GrantCreditInput,
    ) -> Result<MetricUsage> {
        let rc = request_ctx(ctx)?;
        let period = input.period.map(|d| Period::containing(d.0));
        let usage = rc
            .engine
            .correct(
                rc.viewer()?,
                Correction {
                    org_id: &input.organization_id,
                    metric: &input.metric,
                    quantity: input.quantity.0,
                    reason: &input.reason,
                    period,
                    kind: UsageEventKind::Credit,
                },
            )
            .await?;
        Ok(MetricUsage(usage))
    }

    /// Platform team only (invisible to tenants): a signed correction to this period's counter, with a reason.
    #[graphql(visible = "platform_only")]
    async fn adjust_usage(
        &self,
        ctx: &Context<'_>,
        input: AdjustUsageInput,
    ) -> Result<MetricUsage> {
        let rc = request_ctx(ctx)?;
        let period = input.period.map(|d| Period::containing(d.0));
        let usage = rc
            .engine
            .correct(
                rc.viewer()?,
                Correction {
                    org_id: &input.organization_id,
                    metric: &input.metric,
                    quantity: input.quantity.0,
                    reason: &input.reason,
                    period,
                    kind: UsageEventKind::Adjustment,
                },
            )
            .await?;
        Ok(MetricUsage(usage))
    }

    /// Platform team only (invisible to tenants): zero this period's counters (all metrics, or one), with a reason. Audited as RESET events.
    #[graphql(visible = "platform_only")]
    async fn reset_usage(&self, ctx: &Context<'_>, input: ResetUsageInput) -> Result<UsageSummary> {
        let rc = request_ctx(ctx)?;
        let period = input.period.map(|d| Period::containing(d.0));
        let summary = rc
            .engine
            .reset(
                rc.viewer()?,
                &input.organization_id,
                input.metric.as_deref(),
                &input.reason,
                period,
            )
            .await?;
        Ok(UsageSummary(Arc::new(summary)))
    }

    /// OWNER/ADMIN of the organization or the platform team. UPGRADE or DOWNGRADE by plan rank; limits are re-evaluated at once.
    async fn change_plan(
        &self,
        ctx: &Context<'_>,
        input: ChangePlanInput,
    ) -> Result<SubscriptionChange> {
        let rc = request_ctx(ctx)?;
        let action = plans::SubscriptionAction::ChangePlan {
            plan_code: input.plan_code,
            effective_date: input.effective_date.map(|d| d.0),
        };
        let row = plans::change(
            &rc.engine,
            rc.viewer()?,
            input.organization_id.as_ref().map(|i| i.as_str()),
            action,
            input.reason.as_deref(),
        )
        .await?;
        Ok(SubscriptionChange(row))
    }

    async fn cancel_subscription(
        &self,
        ctx: &Context<'_>,
        input: SubscriptionActionInput,
    ) -> Result<SubscriptionChange> {
        let rc = request_ctx(ctx)?;
        let row = plans::change(
            &rc.engine,
            rc.viewer()?,
            input.organization_id.as_ref().map(|i| i.as_str()),
            plans::SubscriptionAction::Cancel,
            input.reason.as_deref(),
        )
        .await?;
        Ok(SubscriptionChange(row))
    }

    async fn reactivate_subscription(
        &self,
        ctx: &Context<'_>,
        input: SubscriptionActionInput,
    ) -> Result<SubscriptionChange> {
        let rc = request_ctx(ctx)?;
        let row = plans::change(
            &rc.engine,
            rc.viewer()?,
            input.organization_id.as_ref().map(|i| i.as_str()),
            plans::SubscriptionAction::Reactivate,
            input.reason.as_deref(),
        )
        .await?;
        Ok(SubscriptionChange(row))
    }

    /// Starts the plan's trial (the given plan, or the current one). An organization has one trial;
    /// the platform team may grant another.
    async fn start_trial(
        &self,
        ctx: &Context<'_>,
        input: StartTrialInput,
    ) -> Result<SubscriptionChange> {
        let rc = request_ctx(ctx)?;
        let action = plans::SubscriptionAction::StartTrial {
            plan_code: input.plan_code,
        };
        let row = plans::change(
            &rc.engine,
            rc.viewer()?,
            input.organization_id.as_ref().map(|i| i.as_str()),
            action,
            input.reason.as_deref(),
        )
        .await?;
        Ok(SubscriptionChange(row))
    }

    async fn end_trial(
        &self,
        ctx: &Context<'_>,
        input: SubscriptionActionInput,
    ) -> Result<SubscriptionChange> {
        let rc = request_ctx(ctx)?;
        let row = plans::change(
            &rc.engine,
            rc.viewer()?,
            input.organization_id.as_ref().map(|i| i.as_str()),
            plans::SubscriptionAction::EndTrial,
            input.reason.as_deref(),
        )
        .await?;
        Ok(SubscriptionChange(row))
    }

    /// Platform team only (invisible to tenants). The first plan (or trial) is the first row of the
    /// organization's subscription history.
    #[graphql(visible = "platform_only")]
    async fn create_organization(
        &self,
        ctx: &Context<'_>,
        input: CreateOrganizationInput,
    ) -> Result<Organization> {
        let rc = request_ctx(ctx)?;
        let org = orgs::create(
            &rc.engine,
            rc.viewer()?,
            orgs::CreateOrganization {
                name: input.name,
                slug: input.slug,
                plan_code: input.plan_code,
                start_trial: input.start_trial.unwrap_or(false),
            },
        )
        .await?;
        Ok(Organization(org))
    }

    /// Platform team only (invisible to tenants): create or update a plan by code, limits included.
    #[graphql(visible = "platform_only")]
    async fn upsert_plan(&self, ctx: &Context<'_>, input: UpsertPlanInput) -> Result<Plan> {
        let rc = request_ctx(ctx)?;
        let plan = plans::upsert(
            &rc.engine,
            rc.viewer()?,
            plans::UpsertPlan {
                code: input.code,
                name: input.name,
                rank: input.rank,
                price_monthly: input.price_monthly.0,
                currency: input.currency,
                trial_days: input.trial_days,
                application_fee_pct: input.application_fee_pct.map(|d| d.0),
                active: input.active,
                stripe_price_id: input.stripe_price_id,
                limits: input
                    .limits
                    .into_iter()
                    .map(|l| plans::LimitInput {
                        metric: l.metric,
                        included: l.included.map(|d| d.0),
                        enforcement: l.enforcement.into(),
                        overage_unit_price: l.overage_unit_price.map(|d| d.0),
                    })
                    .collect(),
                reason: input.reason,
            },
        )
        .await?;
        let loaded = rc
            .loaders
            .load_one(plan.id)
            .await?
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("plan vanished")))?;
        Ok(Plan(loaded))
    }
}

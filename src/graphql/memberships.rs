//! The memberships part of the API (contract/memberships.graphql): membership plans, customers,
//! memberships and their usage per cycle, bookings and quotes. Thin: arguments parsed,
//! `domain::memberships` called, answers shaped. Every read of a record goes through the domain's
//! access checks (a CUSTOMER sees only its own; another's answers as a missing one).

use async_graphql::connection::{Connection, EmptyFields};
use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{booking, customer, membership, membership_plan, usage_event};
use rust_decimal::Decimal;

use super::loaders::{
    BookingRefKey, CustomerKey, CustomerMembershipsKey, CycleUsageKey, MembershipKey,
    MembershipPlanKey,
};
use super::scalars::Dec;
use super::types::{Organization, UsageEventKind, load_org};
use super::{connection_args, cursor_decode, cursor_encode, page_of, request_ctx};
use crate::domain::access::Action;
use crate::domain::memberships::admin::{self, CorrectionKind, StatusAction};
use crate::domain::memberships::bookings::{self as dbook, PriceRequest, Priced};
use crate::domain::memberships::cycles::Interval;
use crate::domain::memberships::pricing::Coverage;
use crate::domain::memberships::{self as dm, UsageView};
use crate::domain::money::Currency;
use crate::domain::{Amount, OrganizationId, Scope, bounded_instant};
use crate::error::AppError;
use crate::store;

fn money_in(currency: &str, scaled: i64) -> Dec {
    let d = Amount::from_scaled(scaled).to_decimal();
    match Currency::parse(currency) {
        Ok(c) => Dec(c.display(d)),
        Err(_) => Dec::money(d),
    }
}

fn loader<'a>(
    ctx: &'a Context<'_>,
) -> Result<
    &'a async_graphql::dataloader::DataLoader<
        super::Loaders,
        async_graphql::dataloader::HashMapCache,
    >,
> {
    Ok(request_ctx(ctx)?.loaders.as_ref())
}

async fn load_membership(ctx: &Context<'_>, id: uuid::Uuid) -> Result<Option<Membership>> {
    Ok(loader(ctx)?
        .load_one(MembershipKey(id))
        .await?
        .map(Membership))
}

async fn load_customer(ctx: &Context<'_>, id: uuid::Uuid) -> Result<Option<Customer>> {
    Ok(loader(ctx)?.load_one(CustomerKey(id)).await?.map(Customer))
}

/// The usage of cycles of one membership, through the request's loader.
async fn usage_views(
    ctx: &Context<'_>,
    m: &membership::Model,
    plan: &membership_plan::Model,
    cycles: &[dm::cycles::Cycle],
) -> Result<Vec<UsageView>> {
    let keys: Vec<CycleUsageKey> = cycles
        .iter()
        .map(|c| CycleUsageKey(m.id, c.index))
        .collect();
    let rows = loader(ctx)?.load_many(keys.iter().copied()).await?;
    Ok(cycles
        .iter()
        .zip(&keys)
        .map(|(c, k)| UsageView::from_row(*c, rows.get(k), plan))
        .collect())
}

/// An actor's id as the caller may see it: a customer sees its own and Stripe's, not the staff's
/// or the backend's user ids.
fn visible_actor<'a>(ctx: &Context<'_>, actor: Option<&'a str>) -> Option<&'a str> {
    let viewer = request_ctx(ctx).ok().and_then(|rc| rc.viewer.as_ref());
    match viewer {
        Some(v) if v.is_customer() => actor.filter(|a| *a == v.sub || *a == "stripe"),
        _ => actor,
    }
}

fn qty(scaled: i64) -> Dec {
    Dec::qty(Amount::from_scaled(scaled).to_decimal())
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::memberships::MembershipStatus")]
pub enum MembershipStatus {
    Active,
    Paused,
    Cancelled,
    PastDue,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::memberships::cycles::Interval")]
pub enum BillingInterval {
    Week,
    Month,
    Year,
}

/// The seed's booking state machine; a booking moves forward only, and may be CANCELLED from any state before COMPLETED.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::memberships::BookingStatus")]
pub enum BookingStatus {
    Initiated,
    PendingProvider,
    Accepted,
    PaymentPending,
    PaymentSucceeded,
    Completed,
    Cancelled,
}

/// How a booking's price was decided.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "crate::domain::memberships::pricing::Coverage")]
pub enum BookingCoverage {
    /// No active membership, benefits not applied, or a guest: the full service price.
    None,
    /// One of the membership's remaining services: the member pays nothing.
    Included,
    /// No service left and overage allowed: the overage rate (or the discounted price when the plan has no rate); counted as usage and as overage.
    Overage,
    /// No service left and no overage: the member discount applies; nothing is counted.
    Discounted,
}

pub struct MembershipPlan(pub membership_plan::Model);

#[Object]
impl MembershipPlan {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn code(&self) -> &str {
        &self.0.code
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Price of one cycle.
    async fn price(&self) -> Dec {
        money_in(&self.0.currency, self.0.price)
    }
    async fn currency(&self) -> &str {
        &self.0.currency
    }
    async fn interval(&self) -> BillingInterval {
        Interval::parse(&self.0.interval)
            .unwrap_or(Interval::Month)
            .into()
    }
    /// Services included in each cycle.
    async fn services_per_cycle(&self) -> i32 {
        self.0.services_per_cycle
    }
    /// Member discount on a service that the allowance does not cover, in percent.
    async fn discount_pct(&self) -> Dec {
        qty(self.0.discount_pct)
    }
    async fn allow_overage(&self) -> bool {
        self.0.allow_overage
    }
    /// Price of one service past the allowance (seed: overageRateCents); null: the discounted service price.
    async fn overage_rate(&self) -> Option<Dec> {
        self.0.overage_rate.map(|r| money_in(&self.0.currency, r))
    }
    async fn active(&self) -> bool {
        self.0.active
    }
    /// The audit of its changes (OWNER/ADMIN/VIEWER/MEMBER, not customers): who changed the price or allowance, why, the definition before and after, oldest first.
    async fn history(&self, ctx: &Context<'_>) -> Result<Vec<MembershipPlanChange>> {
        let rc = request_ctx(ctx)?;
        // The plan was read in the viewer's scope: only the role is left to check.
        dm::require(rc.viewer()?, Action::ReadMemberships)?;
        let rows = store::memberships::plan_history(
            &rc.engine.db,
            rc.scope(),
            OrganizationId(self.0.organization_id),
            self.0.id,
        )
        .await
        .map_err(AppError::from)?;
        Ok(rows.into_iter().map(MembershipPlanChange).collect())
    }
}

/// One audited change of a membership plan.
pub struct MembershipPlanChange(pub entity::membership_plan_history::Model);

#[Object]
impl MembershipPlanChange {
    /// Who made it (to a customer: only itself or Stripe).
    async fn actor(&self, ctx: &Context<'_>) -> Option<&str> {
        visible_actor(ctx, self.0.actor.as_deref())
    }
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    /// The definition before (null when the plan was created), as JSON.
    async fn before(&self) -> Option<async_graphql::Json<serde_json::Value>> {
        self.0
            .before
            .as_deref()
            .and_then(|b| serde_json::from_str(b).ok())
            .map(async_graphql::Json)
    }
    async fn after(&self) -> async_graphql::Json<serde_json::Value> {
        async_graphql::Json(serde_json::from_str(&self.0.after).unwrap_or_default())
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
}

pub struct Customer(pub customer::Model);

#[Object]
impl Customer {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn organization(&self, ctx: &Context<'_>) -> Result<Organization> {
        load_org(ctx, self.0.organization_id).await
    }
    /// The platform's own user id for this customer (the sub of its CUSTOMER tokens); unique within the organization.
    async fn external_id(&self) -> Option<&str> {
        self.0.external_id.as_deref()
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn email(&self) -> Option<&str> {
        self.0.email.as_deref()
    }
    async fn memberships(&self, ctx: &Context<'_>) -> Result<Vec<Membership>> {
        let rows = loader(ctx)?
            .load_one(CustomerMembershipsKey(self.0.id))
            .await?
            .unwrap_or_default();
        Ok(rows.iter().cloned().map(Membership).collect())
    }
    /// The ACTIVE or PAUSED membership, if any (a customer holds at most one at a time in an organization).
    async fn active_membership(&self, ctx: &Context<'_>) -> Result<Option<Membership>> {
        let rows = loader(ctx)?
            .load_one(CustomerMembershipsKey(self.0.id))
            .await?
            .unwrap_or_default();
        Ok(rows
            .iter()
            .find(|m| {
                matches!(
                    dm::MembershipStatus::parse(&m.status),
                    dm::MembershipStatus::Active | dm::MembershipStatus::Paused
                )
            })
            .cloned()
            .map(Membership))
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

pub struct Membership(pub membership::Model);

impl Membership {
    async fn plan_model(&self, ctx: &Context<'_>) -> Result<membership_plan::Model> {
        loader(ctx)?
            .load_one(MembershipPlanKey(self.0.plan_id))
            .await?
            .ok_or_else(|| {
                AppError::internal(anyhow::anyhow!("membership {} has no plan", self.0.id)).into()
            })
    }

    async fn current(&self, ctx: &Context<'_>) -> Result<dm::cycles::Cycle> {
        let rc = request_ctx(ctx)?;
        let plan = self.plan_model(ctx).await?;
        let now = dm::now(&rc.engine);
        Ok(dm::schedule(&self.0, &plan, now).cycle_at(now)?)
    }
}

#[Object]
impl Membership {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn customer(&self, ctx: &Context<'_>) -> Result<Customer> {
        load_customer(ctx, self.0.customer_id)
            .await?
            .ok_or_else(|| AppError::not_found("customer").into())
    }
    async fn plan(&self, ctx: &Context<'_>) -> Result<MembershipPlan> {
        Ok(MembershipPlan(self.plan_model(ctx).await?))
    }
    async fn status(&self) -> MembershipStatus {
        dm::MembershipStatus::parse(&self.0.status).into()
    }
    async fn started_at(&self) -> DateTime<Utc> {
        self.0.started_at
    }
    async fn current_cycle_start(&self, ctx: &Context<'_>) -> Result<DateTime<Utc>> {
        Ok(self.current(ctx).await?.start)
    }
    async fn current_cycle_end(&self, ctx: &Context<'_>) -> Result<DateTime<Utc>> {
        Ok(self.current(ctx).await?.end)
    }
    /// When the allowance resets next (the seed's next reset date); null when cancelled. While paused, the end the cycle would have if it resumed now.
    async fn next_reset_at(&self, ctx: &Context<'_>) -> Result<Option<DateTime<Utc>>> {
        if dm::MembershipStatus::parse(&self.0.status) == dm::MembershipStatus::Cancelled {
            return Ok(None);
        }
        Ok(Some(self.current(ctx).await?.end))
    }
    async fn paused_at(&self) -> Option<DateTime<Utc>> {
        self.0.paused_at
    }
    async fn cancelled_at(&self) -> Option<DateTime<Utc>> {
        self.0.cancelled_at
    }
    async fn stripe_subscription_id(&self) -> Option<&str> {
        self.0.stripe_subscription_id.as_deref()
    }
    /// The audit of its status: subscribed, paused, resumed, cancelled, each with its actor and reason, oldest first.
    async fn changes(&self, ctx: &Context<'_>) -> Result<Vec<MembershipChange>> {
        let rc = request_ctx(ctx)?;
        let rows = store::memberships::changes_of(
            &rc.engine.db,
            rc.scope(),
            OrganizationId(self.0.organization_id),
            self.0.id,
        )
        .await
        .map_err(AppError::from)?;
        Ok(rows.into_iter().map(MembershipChange).collect())
    }
    /// The seed's subscription_usage_summaries row for the cycle containing `at` (default: the current one).
    async fn usage(&self, ctx: &Context<'_>, at: Option<DateTime<Utc>>) -> Result<MembershipUsage> {
        let rc = request_ctx(ctx)?;
        let plan = self.plan_model(ctx).await?;
        let now = dm::now(&rc.engine);
        let at = match at {
            Some(a) if a < self.0.started_at => {
                return Err(AppError::bad_input("at is before the membership started").into());
            }
            Some(a) => bounded_instant("at", a)?,
            None => now,
        };
        let cycle = dm::schedule(&self.0, &plan, now).cycle_at(at)?;
        let view = usage_views(ctx, &self.0, &plan, &[cycle]).await?;
        view.into_iter()
            .next()
            .map(MembershipUsage)
            .ok_or_else(|| AppError::not_found("membership").into())
    }
    /// One summary per cycle overlapping [from, to], oldest first (default: the last 12 cycles up to `to`, default now; at most 120 cycles).
    #[graphql(complexity = "super::page_complexity(Some(12), child_complexity)")]
    async fn usage_history(
        &self,
        ctx: &Context<'_>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Vec<MembershipUsage>> {
        let rc = request_ctx(ctx)?;
        let plan = self.plan_model(ctx).await?;
        let now = dm::now(&rc.engine);
        let from = from.map(|f| bounded_instant("from", f)).transpose()?;
        let to = to
            .map(|t| bounded_instant("to", t))
            .transpose()?
            .unwrap_or(now);
        let schedule = dm::schedule(&self.0, &plan, now);
        let cycles = match from {
            // Without from: the last 12 cycles up to `to`.
            None => schedule.last_cycles(to, 12)?,
            Some(from) if from > to => {
                return Err(AppError::bad_input("from must not be after to").into());
            }
            Some(from) => schedule.cycles_between(from, to, 120)?,
        };
        let views = usage_views(ctx, &self.0, &plan, &cycles).await?;
        Ok(views.into_iter().map(MembershipUsage).collect())
    }
    /// The seed's subscription_usage_records: the ledger, newest first.
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn usage_events(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
    ) -> Result<Connection<String, MembershipUsageEvent, EmptyFields, EmptyFields>> {
        let rc = request_ctx(ctx)?;
        let limit = connection_args(rc, first)?;
        let after_id = after
            .as_deref()
            .map(cursor_decode::<uuid::Uuid>)
            .transpose()?;
        let from = from.map(|f| bounded_instant("from", f)).transpose()?;
        let to = to.map(|t| bounded_instant("to", t)).transpose()?;
        let rows = store::memberships::events_page(
            &rc.engine.db,
            rc.scope(),
            OrganizationId(self.0.organization_id),
            self.0.id,
            from,
            to,
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
            |e| cursor_encode(&e.id),
            MembershipUsageEvent,
        ))
    }
    #[graphql(complexity = "super::page_complexity(first, child_complexity)")]
    async fn bookings(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        status: Option<BookingStatus>,
    ) -> Result<Connection<String, MembershipBooking, EmptyFields, EmptyFields>> {
        let rc = request_ctx(ctx)?;
        let limit = connection_args(rc, first)?;
        let after_id = after
            .as_deref()
            .map(cursor_decode::<uuid::Uuid>)
            .transpose()?;
        let status = status.map(|s| dm::BookingStatus::from(s).as_str());
        let rows = store::memberships::bookings_page(
            &rc.engine.db,
            rc.scope(),
            OrganizationId(self.0.organization_id),
            self.0.id,
            status,
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
            |b| cursor_encode(&b.id),
            MembershipBooking,
        ))
    }
}

/// One change of a membership's status (the audit of pause, resume and cancel).
pub struct MembershipChange(pub entity::membership_change::Model);

#[Object]
impl MembershipChange {
    /// SUBSCRIBE, PAUSE, RESUME, CANCEL, or (from its Stripe subscription) PAST_DUE and REINSTATE.
    async fn action(&self) -> &str {
        &self.0.action
    }
    async fn from_status(&self) -> Option<MembershipStatus> {
        self.0
            .from_status
            .as_deref()
            .map(|s| dm::MembershipStatus::parse(s).into())
    }
    async fn to_status(&self) -> MembershipStatus {
        dm::MembershipStatus::parse(&self.0.to_status).into()
    }
    /// Who made it (to a customer: only itself or Stripe).
    async fn actor(&self, ctx: &Context<'_>) -> Option<&str> {
        visible_actor(ctx, self.0.actor.as_deref())
    }
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
}

pub struct MembershipUsage(pub UsageView);

#[Object]
impl MembershipUsage {
    async fn cycle_start(&self) -> DateTime<Utc> {
        self.0.cycle.start
    }
    async fn cycle_end(&self) -> DateTime<Utc> {
        self.0.cycle.end
    }
    async fn included_services(&self) -> i32 {
        i32::try_from(self.0.included / store::memberships::ONE).unwrap_or(i32::MAX)
    }
    /// Services credited by the organization for this cycle (seed: bonusServices).
    async fn bonus_services(&self) -> Dec {
        qty(self.0.credits)
    }
    /// includedServices + bonusServices.
    async fn total_allowance(&self) -> Dec {
        qty(self.0.allowance())
    }
    /// Services used by completed bookings and manual recordings, corrections included.
    async fn used(&self) -> Dec {
        qty(self.0.used)
    }
    /// Services held by bookings not yet completed or cancelled.
    async fn held(&self) -> Dec {
        qty(self.0.held)
    }
    /// max(totalAllowance - used - held, 0).
    async fn remaining(&self) -> Dec {
        qty(self.0.remaining())
    }
    async fn overage_count(&self) -> Dec {
        qty(self.0.overage_count)
    }
    async fn overage_charges(&self) -> Dec {
        money_in(&self.0.currency, self.0.overage_charges)
    }
    async fn currency(&self) -> &str {
        &self.0.currency
    }
}

pub struct MembershipUsageEvent(pub usage_event::Model);

#[Object]
impl MembershipUsageEvent {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn kind(&self) -> UsageEventKind {
        self.0.kind.into()
    }
    /// Signed change in services.
    async fn quantity(&self) -> Dec {
        qty(self.0.quantity)
    }
    /// True when the service was past the allowance.
    async fn overage(&self) -> bool {
        self.0.overage
    }
    /// What the overage service costs (0 when not overage).
    async fn charge(&self) -> Dec {
        Dec::money(Amount::from_scaled(self.0.charge).to_decimal())
    }
    async fn booking(&self, ctx: &Context<'_>) -> Result<Option<MembershipBooking>> {
        let Some(reference) = &self.0.reference else {
            return Ok(None);
        };
        let key = BookingRefKey(self.0.organization_id, reference.clone());
        Ok(loader(ctx)?.load_one(key).await?.map(MembershipBooking))
    }
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    /// Who made it (to a customer: only itself or Stripe).
    async fn actor(&self, ctx: &Context<'_>) -> Option<&str> {
        visible_actor(ctx, self.0.actor.as_deref())
    }
    async fn occurred_at(&self) -> DateTime<Utc> {
        self.0.occurred_at
    }
    async fn recorded_at(&self) -> DateTime<Utc> {
        self.0.recorded_at
    }
}

/// The seed's calculateSubscriptionPricing() and checkSubscriptionEligibility(), for one service.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct BookingQuote {
    coverage: BookingCoverage,
    #[graphql(skip)]
    membership_id: Option<uuid::Uuid>,
    service_price: Dec,
    /// What the membership took off servicePrice.
    membership_discount: Dec,
    /// servicePrice - membershipDiscount: what the service costs after benefits, before fees.
    subtotal: Dec,
    /// Platform fee on subtotal (the organization's plan applicationFeePct, the seed's 10%), kept by the platform out of the subtotal.
    platform_fee: Dec,
    /// Guest surcharge on subtotal for a booking by someone who is not a signed-in customer (the seed's 10%), added to what the guest pays.
    guest_surcharge: Dec,
    /// What the payer pays: subtotal + guestSurcharge.
    total: Dec,
    /// What the organization receives: subtotal - platformFee.
    provider_payout: Dec,
    /// Services that would remain in the cycle after this booking (null without a membership).
    remaining_after: Option<Dec>,
    currency: String,
}

#[async_graphql::ComplexObject]
impl BookingQuote {
    async fn membership(&self, ctx: &Context<'_>) -> Result<Option<Membership>> {
        let Some(id) = self.membership_id else {
            return Ok(None);
        };
        load_membership(ctx, id).await
    }
}

impl BookingQuote {
    fn from_priced(p: Priced) -> Self {
        let q = p.quote;
        let c = q.currency.clone();
        BookingQuote {
            coverage: q.coverage.into(),
            membership_id: p.membership.map(|m| m.id),
            service_price: Dec(c.display(q.service_price)),
            membership_discount: Dec(c.display(q.membership_discount)),
            subtotal: Dec(c.display(q.subtotal)),
            platform_fee: Dec(c.display(q.platform_fee)),
            guest_surcharge: Dec(c.display(q.guest_surcharge)),
            total: Dec(c.display(q.total)),
            provider_payout: Dec(c.display(q.provider_payout)),
            remaining_after: q.remaining_after.map(Dec::qty),
            currency: c.as_str().to_owned(),
        }
    }

    fn from_booking(b: &booking::Model) -> Self {
        let m = |v: i64| money_in(&b.currency, v);
        BookingQuote {
            coverage: Coverage::parse(&b.coverage).into(),
            membership_id: b.membership_id,
            service_price: m(b.service_price),
            membership_discount: m(b.membership_discount),
            subtotal: m(b.subtotal),
            platform_fee: m(b.platform_fee),
            guest_surcharge: m(b.guest_surcharge),
            total: m(b.total),
            provider_payout: m(b.provider_payout),
            remaining_after: b.remaining_after.map(qty),
            currency: b.currency.clone(),
        }
    }
}

pub struct MembershipBooking(pub booking::Model);

#[Object]
impl MembershipBooking {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// The platform's booking id (e.g. booking:123); unique within the organization.
    async fn reference(&self) -> &str {
        &self.0.reference
    }
    async fn customer(&self, ctx: &Context<'_>) -> Result<Option<Customer>> {
        let Some(id) = self.0.customer_id else {
            return Ok(None);
        };
        load_customer(ctx, id).await
    }
    async fn membership(&self, ctx: &Context<'_>) -> Result<Option<Membership>> {
        let Some(id) = self.0.membership_id else {
            return Ok(None);
        };
        load_membership(ctx, id).await
    }
    async fn status(&self) -> BookingStatus {
        dm::BookingStatus::parse(&self.0.status).into()
    }
    /// The price decided when the booking was created (or linked).
    async fn quote(&self) -> BookingQuote {
        BookingQuote::from_booking(&self.0)
    }
    /// True from creation until completion or cancellation when the booking holds one of the membership's services.
    async fn holds_service(&self) -> bool {
        self.0.holds_service
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

#[derive(SimpleObject)]
pub struct CustomerTotal {
    total_count: i32,
}

// ---- the Organization's fields ----

pub async fn membership_plans(
    ctx: &Context<'_>,
    org: OrganizationId,
    include_inactive: bool,
) -> Result<Vec<MembershipPlan>> {
    let rc = request_ctx(ctx)?;
    // The organization is in hand (in the viewer's scope): only the role is left to check.
    dm::require(rc.viewer()?, Action::ReadMemberships)?;
    let rows = store::memberships::plans_of(&rc.engine.db, rc.scope(), org, include_inactive)
        .await
        .map_err(AppError::from)?;
    Ok(rows.into_iter().map(MembershipPlan).collect())
}

pub async fn customers(
    ctx: &Context<'_>,
    org: OrganizationId,
    first: Option<i32>,
    after: Option<String>,
    search: Option<String>,
) -> Result<Connection<String, Customer, CustomerTotal, EmptyFields>> {
    let rc = request_ctx(ctx)?;
    // The organization is in hand (in the viewer's scope): only the role is left to check.
    dm::require(rc.viewer()?, Action::ReadMemberships)?;
    let limit = connection_args(rc, first)?;
    let after_id = after
        .as_deref()
        .map(cursor_decode::<uuid::Uuid>)
        .transpose()?;
    let search = search.as_deref().map(str::trim).filter(|s| !s.is_empty());
    if search.is_some_and(|s| s.chars().count() > 255) {
        return Err(AppError::bad_input("search is longer than 255 characters").into());
    }
    let db = &rc.engine.db;
    let rows =
        store::memberships::customers_page(db, rc.scope(), org, search, after_id, limit as u64 + 1)
            .await
            .map_err(AppError::from)?;
    let total = store::memberships::customers_count(db, rc.scope(), org, search)
        .await
        .map_err(AppError::from)?;
    let rows: Vec<customer::Model> = rows.into_iter().take(limit + 1).collect();
    let look = ctx.look_ahead();
    let wants = |f: &str| {
        look.field("nodes").field(f).exists() || look.field("edges").field("node").field(f).exists()
    };
    if wants("memberships") || wants("activeMembership") {
        prime(ctx, &rows[..rows.len().min(limit)]).await?;
    }
    let total = CustomerTotal {
        total_count: i32::try_from(total).unwrap_or(i32::MAX),
    };
    Ok(page_of(
        rows,
        limit,
        after.is_some(),
        total,
        |c| cursor_encode(&c.id),
        Customer,
    ))
}

/// Loads a page of customers' memberships, their plans and their current cycles' counters in
/// three statements, into the request's loaders, so the page's fields find them there whatever
/// the batching window does.
async fn prime(ctx: &Context<'_>, customers: &[customer::Model]) -> Result<()> {
    let rc = request_ctx(ctx)?;
    let (db, scope) = (&rc.engine.db, rc.scope());
    let loaders = loader(ctx)?;
    let ids: Vec<uuid::Uuid> = customers.iter().map(|c| c.id).collect();
    let memberships = store::memberships::memberships_of_customers(db, scope, &ids)
        .await
        .map_err(AppError::from)?;
    let mut plan_ids: Vec<uuid::Uuid> = memberships.iter().map(|m| m.plan_id).collect();
    plan_ids.sort();
    plan_ids.dedup();
    let plans = store::memberships::plans_by_ids(db, scope, &plan_ids)
        .await
        .map_err(AppError::from)?;
    let now = dm::now(&rc.engine);
    let mut current = Vec::new();
    for m in &memberships {
        if let Some(p) = plans.iter().find(|p| p.id == m.plan_id) {
            current.push((m.id, dm::schedule(m, p, now).cycle_at(now)?.index));
        }
    }
    let rows = store::memberships::usage_rows(db, scope, &current)
        .await
        .map_err(AppError::from)?;
    let mut by_customer: std::collections::HashMap<uuid::Uuid, Vec<membership::Model>> =
        ids.iter().map(|id| (*id, Vec::new())).collect();
    for m in &memberships {
        if let Some(list) = by_customer.get_mut(&m.customer_id) {
            list.push(m.clone());
        }
    }
    loaders
        .feed_many(
            by_customer
                .into_iter()
                .map(|(c, list)| (CustomerMembershipsKey(c), std::sync::Arc::new(list))),
        )
        .await;
    loaders
        .feed_many(memberships.into_iter().map(|m| (MembershipKey(m.id), m)))
        .await;
    loaders
        .feed_many(plans.into_iter().map(|p| (MembershipPlanKey(p.id), p)))
        .await;
    loaders
        .feed_many(customers.iter().map(|c| (CustomerKey(c.id), c.clone())))
        .await;
    loaders
        .feed_many(
            rows.into_iter()
                .map(|r| (CycleUsageKey(r.membership_id, r.cycle), r)),
        )
        .await;
    Ok(())
}

/// Viewer.customer: the Customer of a CUSTOMER token.
pub async fn viewer_customer(ctx: &Context<'_>) -> Result<Option<Customer>> {
    let rc = request_ctx(ctx)?;
    let viewer = rc.viewer()?;
    Ok(dm::own_customer(&rc.engine.db, viewer).await?.map(Customer))
}

// ---- inputs ----

#[derive(InputObject)]
pub struct UpsertMembershipPlanInput {
    organization_id: Option<ID>,
    code: String,
    name: String,
    price: Dec,
    currency: Option<String>,
    interval: BillingInterval,
    services_per_cycle: i32,
    discount_pct: Option<Dec>,
    allow_overage: Option<bool>,
    /// Left out: kept (an update); null: no rate (overage at the discounted price).
    overage_rate: async_graphql::MaybeUndefined<Dec>,
    active: Option<bool>,
    /// Why, for the plan's audit (default "plan created" or "plan updated").
    reason: Option<String>,
}

#[derive(InputObject)]
pub struct CreateCustomerInput {
    organization_id: Option<ID>,
    external_id: Option<String>,
    name: String,
    email: Option<String>,
}

#[derive(InputObject)]
pub struct SubscribeCustomerInput {
    customer_id: ID,
    plan_code: String,
    starts_at: Option<DateTime<Utc>>,
    stripe_subscription_id: Option<String>,
}

#[derive(InputObject)]
pub struct MembershipActionInput {
    membership_id: ID,
    reason: Option<String>,
}

#[derive(InputObject)]
pub struct MembershipCorrectionInput {
    membership_id: ID,
    quantity: Dec,
    reason: String,
}

#[derive(InputObject)]
pub struct MembershipResetInput {
    membership_id: ID,
    reason: String,
}

#[derive(InputObject)]
pub struct QuoteBookingInput {
    organization_id: Option<ID>,
    /// Default: the calling CUSTOMER; none for a guest.
    customer_id: Option<ID>,
    service_price: Dec,
    currency: Option<String>,
    /// True for someone who is not a signed-in customer: no membership, plus the guest surcharge.
    #[graphql(default_with = "Some(false)")]
    guest: Option<bool>,
    #[graphql(default_with = "Some(true)")]
    apply_membership_benefits: Option<bool>,
}

#[derive(InputObject)]
pub struct CreateBookingInput {
    organization_id: Option<ID>,
    reference: String,
    customer_id: Option<ID>,
    service_price: Dec,
    currency: Option<String>,
    #[graphql(default_with = "Some(false)")]
    guest: Option<bool>,
    #[graphql(default_with = "Some(true)")]
    apply_membership_benefits: Option<bool>,
}

#[derive(InputObject)]
pub struct UpdateBookingStatusInput {
    organization_id: Option<ID>,
    reference: String,
    status: BookingStatus,
    reason: Option<String>,
}

#[derive(InputObject)]
pub struct LinkBookingInput {
    organization_id: Option<ID>,
    reference: String,
    customer_id: ID,
    service_price: Dec,
    currency: Option<String>,
    status: Option<BookingStatus>,
}

#[derive(InputObject)]
pub struct BookingRefInput {
    organization_id: Option<ID>,
    reference: String,
}

fn price_request(
    organization_id: Option<ID>,
    customer_id: Option<ID>,
    service_price: Dec,
    currency: Option<String>,
    guest: Option<bool>,
    apply: Option<bool>,
) -> PriceRequest {
    PriceRequest {
        organization_id: organization_id.map(|i| i.0),
        customer_id: customer_id.map(|i| i.0),
        service_price: service_price.0,
        currency,
        guest: guest.unwrap_or(false),
        apply_benefits: apply.unwrap_or(true),
    }
}

// ---- roots ----

#[derive(Default)]
pub struct MembershipsQuery;

#[Object]
impl MembershipsQuery {
    /// Another organization's customer answers null with NOT_FOUND, exactly as a missing one.
    async fn customer(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Customer>> {
        let rc = request_ctx(ctx)?;
        let c = dm::customer_for(
            &rc.engine.db,
            rc.viewer()?,
            &id,
            Action::ReadMemberships,
            true,
        )
        .await?;
        Ok(Some(Customer(c)))
    }
    async fn membership(&self, ctx: &Context<'_>, id: ID) -> Result<Option<Membership>> {
        let rc = request_ctx(ctx)?;
        let m = dm::membership_for(
            &rc.engine.db,
            rc.viewer()?,
            &id,
            Action::ReadMemberships,
            true,
        )
        .await?;
        Ok(Some(Membership(m)))
    }
    async fn booking(
        &self,
        ctx: &Context<'_>,
        organization_id: Option<ID>,
        reference: String,
    ) -> Result<Option<MembershipBooking>> {
        let rc = request_ctx(ctx)?;
        let viewer = rc.viewer()?;
        let db = &rc.engine.db;
        let org = dm::org_for(
            db,
            viewer,
            organization_id.as_ref().map(|i| i.as_str()),
            Action::ReadMemberships,
            true,
        )
        .await?;
        let b = store::memberships::booking_by_reference(
            db,
            rc.scope(),
            OrganizationId(org.id),
            reference.trim(),
            false,
        )
        .await
        .map_err(AppError::from)?
        .ok_or_else(|| AppError::not_found("booking"))?;
        if viewer.is_customer() {
            let own = dm::own_customer(db, viewer).await?;
            if own.is_none() || own.map(|c| c.id) != b.customer_id {
                return Err(AppError::not_found("booking").into());
            }
        }
        Ok(Some(MembershipBooking(b)))
    }
    /// Price one service for a customer (default: the calling CUSTOMER) or a guest; records nothing.
    async fn quote_booking(
        &self,
        ctx: &Context<'_>,
        input: QuoteBookingInput,
    ) -> Result<BookingQuote> {
        let rc = request_ctx(ctx)?;
        let req = price_request(
            input.organization_id,
            input.customer_id,
            input.service_price,
            input.currency,
            input.guest,
            input.apply_membership_benefits,
        );
        let priced = dbook::quote(&rc.engine, rc.viewer()?, req).await?;
        Ok(BookingQuote::from_priced(priced))
    }
}

#[derive(Default)]
pub struct MembershipsMutation;

#[Object]
impl MembershipsMutation {
    /// OWNER/ADMIN: create or update a membership plan of the organization by code.
    async fn upsert_membership_plan(
        &self,
        ctx: &Context<'_>,
        input: UpsertMembershipPlanInput,
    ) -> Result<MembershipPlan> {
        let rc = request_ctx(ctx)?;
        let plan = admin::upsert_plan(
            &rc.engine,
            rc.viewer()?,
            admin::PlanInput {
                organization_id: input.organization_id.map(|i| i.0),
                code: input.code,
                name: input.name,
                price: input.price.0,
                currency: input.currency,
                interval: input.interval.into(),
                services_per_cycle: input.services_per_cycle,
                discount_pct: input.discount_pct.map(|d| d.0),
                allow_overage: input.allow_overage,
                overage_rate: match input.overage_rate {
                    async_graphql::MaybeUndefined::Undefined => None,
                    async_graphql::MaybeUndefined::Null => Some(None),
                    async_graphql::MaybeUndefined::Value(d) => Some(Some(d.0)),
                },
                active: input.active,
                reason: input.reason,
            },
        )
        .await?;
        Ok(MembershipPlan(plan))
    }
    /// OWNER/ADMIN: add a customer (idempotent by externalId).
    async fn create_customer(
        &self,
        ctx: &Context<'_>,
        input: CreateCustomerInput,
    ) -> Result<Customer> {
        let rc = request_ctx(ctx)?;
        let c = admin::create_customer(
            &rc.engine,
            rc.viewer()?,
            admin::CustomerInput {
                organization_id: input.organization_id.map(|i| i.0),
                external_id: input.external_id,
                name: input.name,
                email: input.email,
            },
        )
        .await?;
        Ok(Customer(c))
    }
    /// OWNER/ADMIN: subscribe a customer to a membership plan; its first cycle starts at startsAt (default: now).
    async fn subscribe_customer(
        &self,
        ctx: &Context<'_>,
        input: SubscribeCustomerInput,
    ) -> Result<Membership> {
        let rc = request_ctx(ctx)?;
        let m = admin::subscribe(
            &rc.engine,
            rc.viewer()?,
            admin::SubscribeInput {
                customer_id: input.customer_id.0,
                plan_code: input.plan_code,
                starts_at: input.starts_at,
                stripe_subscription_id: input.stripe_subscription_id,
            },
        )
        .await?;
        Ok(Membership(m))
    }
    /// OWNER/ADMIN or the customer itself: pause (benefits stop applying, the cycle stops running) and resume (the cycle is extended by the pause).
    async fn pause_membership(
        &self,
        ctx: &Context<'_>,
        input: MembershipActionInput,
    ) -> Result<Membership> {
        status_action(ctx, input, StatusAction::Pause).await
    }
    async fn resume_membership(
        &self,
        ctx: &Context<'_>,
        input: MembershipActionInput,
    ) -> Result<Membership> {
        status_action(ctx, input, StatusAction::Resume).await
    }
    async fn cancel_membership(
        &self,
        ctx: &Context<'_>,
        input: MembershipActionInput,
    ) -> Result<Membership> {
        status_action(ctx, input, StatusAction::Cancel).await
    }
    /// OWNER/ADMIN: credit services to the current cycle (seed: bonusServices), with a reason. Audited.
    async fn grant_membership_credit(
        &self,
        ctx: &Context<'_>,
        input: MembershipCorrectionInput,
    ) -> Result<MembershipUsage> {
        correction(
            ctx,
            &input.membership_id,
            CorrectionKind::Credit,
            Some(input.quantity.0),
            &input.reason,
        )
        .await
    }
    /// OWNER/ADMIN: a signed correction of the current cycle's used services, with a reason. Audited.
    async fn adjust_membership_usage(
        &self,
        ctx: &Context<'_>,
        input: MembershipCorrectionInput,
    ) -> Result<MembershipUsage> {
        correction(
            ctx,
            &input.membership_id,
            CorrectionKind::Adjust,
            Some(input.quantity.0),
            &input.reason,
        )
        .await
    }
    /// OWNER/ADMIN: zero the current cycle's used services, with a reason. Audited as a RESET event.
    async fn reset_membership_usage(
        &self,
        ctx: &Context<'_>,
        input: MembershipResetInput,
    ) -> Result<MembershipUsage> {
        correction(
            ctx,
            &input.membership_id,
            CorrectionKind::Reset,
            None,
            &input.reason,
        )
        .await
    }
    /// SERVICE, OWNER/ADMIN, or the customer itself: create a booking priced with the membership's benefits; an INCLUDED booking holds a service at once (two bookings never take the last service twice). Idempotent by reference.
    async fn create_booking(
        &self,
        ctx: &Context<'_>,
        input: CreateBookingInput,
    ) -> Result<MembershipBooking> {
        let rc = request_ctx(ctx)?;
        let req = price_request(
            input.organization_id,
            input.customer_id,
            input.service_price,
            input.currency,
            input.guest,
            input.apply_membership_benefits,
        );
        let b = dbook::create(&rc.engine, rc.viewer()?, &input.reference, req).await?;
        Ok(MembershipBooking(b))
    }
    /// SERVICE or OWNER/ADMIN: move a booking along the state machine. COMPLETED turns its hold into usage (and records overage); CANCELLED before completion gives the hold back. Repeating the current status changes nothing.
    async fn update_booking_status(
        &self,
        ctx: &Context<'_>,
        input: UpdateBookingStatusInput,
    ) -> Result<MembershipBooking> {
        let rc = request_ctx(ctx)?;
        let b = dbook::update_status(
            &rc.engine,
            rc.viewer()?,
            input.organization_id.as_ref().map(|i| i.as_str()),
            &input.reference,
            input.status.into(),
            input.reason.as_deref(),
        )
        .await?;
        Ok(MembershipBooking(b))
    }
    /// OWNER/ADMIN: link an existing booking to the customer's membership (priced and held as createBooking would).
    async fn link_booking(
        &self,
        ctx: &Context<'_>,
        input: LinkBookingInput,
    ) -> Result<MembershipBooking> {
        let rc = request_ctx(ctx)?;
        let b = dbook::link(
            &rc.engine,
            rc.viewer()?,
            dbook::LinkRequest {
                organization_id: input.organization_id.map(|i| i.0),
                reference: input.reference,
                customer_id: input.customer_id.0,
                service_price: input.service_price.0,
                currency: input.currency,
                status: input.status.map(Into::into),
            },
        )
        .await?;
        Ok(MembershipBooking(b))
    }
    /// OWNER/ADMIN: unlink a booking that is not completed from its membership; its hold is given back.
    async fn unlink_booking(
        &self,
        ctx: &Context<'_>,
        input: BookingRefInput,
    ) -> Result<MembershipBooking> {
        let rc = request_ctx(ctx)?;
        let b = dbook::unlink(
            &rc.engine,
            rc.viewer()?,
            input.organization_id.as_ref().map(|i| i.as_str()),
            &input.reference,
        )
        .await?;
        Ok(MembershipBooking(b))
    }
}

async fn status_action(
    ctx: &Context<'_>,
    input: MembershipActionInput,
    action: StatusAction,
) -> Result<Membership> {
    let rc = request_ctx(ctx)?;
    let m = admin::change_status(
        &rc.engine,
        rc.viewer()?,
        &input.membership_id,
        action,
        input.reason.as_deref(),
    )
    .await?;
    Ok(Membership(m))
}

async fn correction(
    ctx: &Context<'_>,
    id: &ID,
    kind: CorrectionKind,
    quantity: Option<Decimal>,
    reason: &str,
) -> Result<MembershipUsage> {
    let rc = request_ctx(ctx)?;
    let u = admin::correct(&rc.engine, rc.viewer()?, id, kind, quantity, reason).await?;
    Ok(MembershipUsage(u))
}

/// The membership a subscription follows, for `membershipUpdated`: the viewer must be able to read it.
pub async fn watched_membership(
    ctx: &Context<'_>,
    id: &ID,
) -> Result<(membership::Model, crate::domain::Viewer)> {
    let rc = request_ctx(ctx)?;
    let viewer = rc.viewer()?.clone();
    let m = dm::membership_for(&rc.engine.db, &viewer, id, Action::ReadMemberships, true).await?;
    Ok((m, viewer))
}

/// A membership read afresh (a subscription's result), in the viewer's scope.
pub async fn reload_membership<C: sea_orm::ConnectionTrait>(
    db: &C,
    scope: Scope,
    id: uuid::Uuid,
) -> Result<Option<Membership>> {
    Ok(store::memberships::memberships_by_ids(db, scope, &[id])
        .await
        .map_err(AppError::from)?
        .into_iter()
        .next()
        .map(Membership))
}

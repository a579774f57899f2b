//! What an organization's admins do with memberships: plans, customers, subscriptions, pause,
//! resume and cancel (audited in `membership_changes`), and corrections of a cycle's usage (ledger
//! events with their actor and reason: the seed's PUT and DELETE of /api/subscriptions/usage).

use chrono::{DateTime, Utc};
use entity::enums::UsageEventKind;
use entity::{customer, membership, membership_change, membership_plan, usage_event};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::cycles::{self, Interval};
use super::{
    MembershipStatus, SERVICES, UsageView, commit_and_publish, customer_for, membership_for, now,
    open_cycle, org_for, plan_of,
};
use crate::domain::access::Action;
use crate::domain::money::Currency;
use crate::domain::usage::Engine;
use crate::domain::{
    Amount, OrganizationId, Slug, Viewer, bounded_instant, optional_text, required_text,
};
use crate::error::{AppError, AppResult};
use crate::store;
use crate::store::memberships::{CycleKey, UsageChange};

pub struct PlanInput {
    pub organization_id: Option<String>,
    pub code: String,
    pub name: String,
    pub price: Decimal,
    pub currency: Option<String>,
    pub interval: Interval,
    pub services_per_cycle: i32,
    pub discount_pct: Option<Decimal>,
    pub allow_overage: Option<bool>,
    /// None: keep (an update) or none (a new plan); Some(None): no rate.
    pub overage_rate: Option<Option<Decimal>>,
    pub active: Option<bool>,
    pub reason: Option<String>,
}

/// A plan's definition as its audit rows keep it (amounts in major units, exact).
fn definition(p: &membership_plan::Model) -> serde_json::Value {
    let d = |v: i64| Amount::from_scaled(v).to_decimal().normalize().to_string();
    serde_json::json!({
        "name": p.name,
        "price": d(p.price),
        "currency": p.currency,
        "interval": p.interval,
        "servicesPerCycle": p.services_per_cycle,
        "discountPct": d(p.discount_pct),
        "allowOverage": p.allow_overage,
        "overageRate": p.overage_rate.map(d),
        "active": p.active,
    })
}

fn percent(field: &str, d: Decimal) -> AppResult<i64> {
    if d < Decimal::ZERO || d > Decimal::ONE_HUNDRED {
        return Err(AppError::bad_input(format!(
            "{field} must be between 0 and 100"
        )));
    }
    Ok(Amount::parse(field, d)?.scaled())
}

/// upsertMembershipPlan: OWNER/ADMIN, by code; a plan's later changes apply to cycles that begin
/// after them (a cycle keeps the allowance it started with). Each change is audited (actor,
/// reason, the definition before and after) in the same transaction; an unchanged definition
/// writes nothing.
pub async fn upsert_plan(
    engine: &Engine,
    viewer: &Viewer,
    input: PlanInput,
) -> AppResult<membership_plan::Model> {
    let org = org_for(
        &engine.db,
        viewer,
        input.organization_id.as_deref(),
        Action::ManageMemberships,
        false,
    )
    .await?;
    let code = Slug::parse(&input.code)
        .map_err(|_| {
            AppError::bad_input(format!(
                "invalid plan code {}: lowercase letters, digits, - and _",
                crate::error::quote(&input.code)
            ))
        })?
        .into_inner();
    let name = required_text("name", &input.name, 255)?;
    if !(0..=100_000).contains(&input.services_per_cycle) {
        return Err(AppError::bad_input(
            "servicesPerCycle must be between 0 and 100000",
        ));
    }
    let reason = optional_text("reason", input.reason.as_deref(), 1000)?;
    let scope = viewer.scope();
    let org_id = OrganizationId(org.id);
    let txn = engine.db.begin_write().await?;
    let before = store::memberships::plan_by_code(&*txn, scope, org_id, &code).await?;
    // An update keeps what it does not name.
    let currency = Currency::parse(
        input
            .currency
            .as_deref()
            .or(before.as_ref().map(|b| b.currency.as_str()))
            .unwrap_or("usd"),
    )?;
    let price = super::pricing::check_price("price", input.price, &currency)?;
    let overage_rate = match input.overage_rate {
        Some(r) => r
            .map(|r| super::pricing::check_price("overageRate", r, &currency))
            .transpose()?
            .map(|r| Amount::parse("overageRate", r).map(Amount::scaled))
            .transpose()?,
        None => before.as_ref().and_then(|b| b.overage_rate),
    };
    let now = Utc::now();
    let row = membership_plan::Model {
        id: Uuid::now_v7(),
        organization_id: org.id,
        code,
        name,
        price: Amount::parse("price", price)?.scaled(),
        currency: currency.as_str().to_owned(),
        interval: input.interval.as_str().to_owned(),
        services_per_cycle: input.services_per_cycle,
        discount_pct: match input.discount_pct {
            Some(d) => percent("discountPct", d)?,
            None => before.as_ref().map(|b| b.discount_pct).unwrap_or(0),
        },
        allow_overage: input
            .allow_overage
            .or(before.as_ref().map(|b| b.allow_overage))
            .unwrap_or(false),
        overage_rate,
        active: input
            .active
            .or(before.as_ref().map(|b| b.active))
            .unwrap_or(true),
        created_at: now,
        updated_at: now,
    };
    if let Some(b) = &before {
        if definition(b) == definition(&row) {
            txn.rollback().await?;
            return Ok(b.clone());
        }
        // Memberships' cycles and counters are in the plan's interval and currency: changing them
        // would rewrite their past. A new plan (code) is the way.
        if (b.interval != row.interval || b.currency != row.currency)
            && store::memberships::plan_in_use(&*txn, scope, org_id, b.id).await?
        {
            txn.rollback().await?;
            return Err(AppError::conflict(
                "the plan has memberships: its interval and currency cannot change (create a plan with a new code)",
            ));
        }
    }
    let stored = store::memberships::upsert_plan(&*txn, scope, row)
        .await?
        .ok_or_else(|| AppError::not_found("organization"))?;
    store::memberships::insert_plan_history(
        &*txn,
        scope,
        entity::membership_plan_history::Model {
            id: Uuid::now_v7(),
            organization_id: org.id,
            plan_id: stored.id,
            code: stored.code.clone(),
            actor: Some(viewer.sub.clone()),
            reason: reason.or_else(|| {
                Some(
                    if before.is_some() {
                        "plan updated"
                    } else {
                        "plan created"
                    }
                    .to_owned(),
                )
            }),
            before: before.as_ref().map(|b| definition(b).to_string()),
            after: definition(&stored).to_string(),
            at: Utc::now(),
        },
    )
    .await?;
    txn.commit().await?;
    Ok(stored)
}

pub struct CustomerInput {
    pub organization_id: Option<String>,
    pub external_id: Option<String>,
    pub name: String,
    pub email: Option<String>,
}

/// createCustomer: OWNER/ADMIN; idempotent by externalId (the same externalId answers the customer
/// already stored).
pub async fn create_customer(
    engine: &Engine,
    viewer: &Viewer,
    input: CustomerInput,
) -> AppResult<customer::Model> {
    let org = org_for(
        &engine.db,
        viewer,
        input.organization_id.as_deref(),
        Action::ManageMemberships,
        false,
    )
    .await?;
    let external_id = optional_text("externalId", input.external_id.as_deref(), 255)?;
    let name = required_text("name", &input.name, 255)?;
    let email = optional_text("email", input.email.as_deref(), 320)?;
    if email.as_deref().is_some_and(|e| !e.contains('@')) {
        return Err(AppError::bad_input("email is not an email address"));
    }
    let row = customer::Model {
        id: Uuid::now_v7(),
        organization_id: org.id,
        external_id: external_id.clone(),
        name,
        email,
        created_at: now(engine),
    };
    let scope = viewer.scope();
    let txn = engine.db.begin_write().await?;
    let inserted = store::memberships::insert_customer(&*txn, scope, row.clone()).await?;
    let stored = match (inserted, &external_id) {
        (true, _) => row,
        (false, Some(ext)) => {
            store::memberships::customer_by_external(&*txn, scope, OrganizationId(org.id), ext)
                .await?
                .ok_or_else(|| AppError::not_found("customer"))?
        }
        (false, None) => return Err(AppError::not_found("organization")),
    };
    txn.commit().await?;
    Ok(stored)
}

pub struct SubscribeInput {
    pub customer_id: String,
    pub plan_code: String,
    pub starts_at: Option<DateTime<Utc>>,
    pub stripe_subscription_id: Option<String>,
}

fn change_row(
    m: &membership::Model,
    action: &str,
    from: Option<&str>,
    viewer: &Viewer,
    reason: Option<String>,
    at: DateTime<Utc>,
) -> membership_change::Model {
    membership_change::Model {
        id: Uuid::now_v7(),
        organization_id: m.organization_id,
        membership_id: m.id,
        action: action.to_owned(),
        from_status: from.map(str::to_owned),
        to_status: m.status.clone(),
        actor: Some(viewer.sub.clone()),
        reason,
        at,
    }
}

/// subscribeCustomer: OWNER/ADMIN. Its first cycle starts at startsAt (default now; it may be in
/// the past, not in the future).
pub async fn subscribe(
    engine: &Engine,
    viewer: &Viewer,
    input: SubscribeInput,
) -> AppResult<membership::Model> {
    let c = customer_for(
        &engine.db,
        viewer,
        &input.customer_id,
        Action::ManageMemberships,
        false,
    )
    .await?;
    let org = OrganizationId(c.organization_id);
    let scope = viewer.scope();
    let plan = store::memberships::plan_by_code(&engine.db, scope, org, input.plan_code.trim())
        .await?
        .filter(|p| p.active)
        .ok_or_else(|| AppError::not_found("membership plan"))?;
    let at = now(engine);
    let starts = match input.starts_at {
        Some(s) => {
            let s = bounded_instant("startsAt", s)?;
            if s > at + engine.clock_skew {
                return Err(AppError::bad_input("startsAt must not be in the future"));
            }
            DateTime::from_timestamp(s.timestamp(), 0)
                .unwrap_or(s)
                .min(at)
        }
        None => at,
    };
    let stripe_subscription_id = optional_text(
        "stripeSubscriptionId",
        input.stripe_subscription_id.as_deref(),
        255,
    )?;
    let m = membership::Model {
        id: Uuid::now_v7(),
        organization_id: c.organization_id,
        customer_id: c.id,
        plan_id: plan.id,
        status: MembershipStatus::Active.as_str().to_owned(),
        started_at: starts,
        paused_at: None,
        pauses: "[]".to_owned(),
        cancelled_at: None,
        stripe_subscription_id,
        created_at: at,
        updated_at: at,
    };
    let txn = engine.db.begin_write().await?;
    if !store::memberships::insert_membership(&*txn, scope, m.clone()).await? {
        return Err(AppError::conflict(
            "the customer already holds an ACTIVE or PAUSED membership in this organization",
        ));
    }
    open_cycle(&*txn, scope, &m, &plan, at).await?;
    store::memberships::insert_change(
        &*txn,
        scope,
        change_row(&m, "SUBSCRIBE", None, viewer, None, at),
    )
    .await?;
    commit_and_publish(engine, txn, &[(org, m.id)]).await?;
    Ok(m)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusAction {
    Pause,
    Resume,
    Cancel,
    /// Its Stripe subscription's payment failed (PAST_DUE: no benefits until it is paid).
    PastDue,
    /// Paid again: ACTIVE.
    Reinstate,
}

/// pauseMembership, resumeMembership, cancelMembership: OWNER/ADMIN or the customer itself.
pub async fn change_status(
    engine: &Engine,
    viewer: &Viewer,
    id: &str,
    action: StatusAction,
    reason: Option<&str>,
) -> AppResult<membership::Model> {
    let found = membership_for(&engine.db, viewer, id, Action::ManageMemberships, true).await?;
    let reason = optional_text("reason", reason, 1000)?;
    let txn = engine.db.begin_write().await?;
    let m = change_status_in(engine, &*txn, viewer, found.id, action, reason).await?;
    commit_and_publish(engine, txn, &[(OrganizationId(m.organization_id), m.id)]).await?;
    Ok(m)
}

/// A membership's change of status inside the caller's transaction (the API's, or a Stripe
/// webhook's): locked, checked against the current status (CONFLICT when it makes no sense),
/// audited. Cancelling gives back every open booking's hold.
pub(crate) async fn change_status_in<C: sea_orm::ConnectionTrait>(
    engine: &Engine,
    db: &C,
    viewer: &Viewer,
    id: Uuid,
    action: StatusAction,
    reason: Option<String>,
) -> AppResult<membership::Model> {
    let scope = viewer.scope();
    let mut m = store::memberships::lock_membership(db, scope, id)
        .await?
        .ok_or_else(|| AppError::not_found("membership"))?;
    let org = OrganizationId(m.organization_id);
    let plan = plan_of(db, &m).await?;
    let at = now(engine);
    let from = MembershipStatus::parse(&m.status);
    let refuse = |what: &str| {
        Err(AppError::conflict(format!(
            "a membership in state {} cannot be {what}",
            from.as_str()
        )))
    };
    let mut pauses = cycles::parse_pauses(&m.pauses);
    let (to, name) = match action {
        StatusAction::Pause => {
            if from != MembershipStatus::Active {
                return refuse("paused");
            }
            m.paused_at = Some(at);
            (MembershipStatus::Paused, "PAUSE")
        }
        StatusAction::Resume => {
            let (MembershipStatus::Paused, Some(p)) = (from, m.paused_at) else {
                return refuse("resumed");
            };
            pauses.push((p, at.max(p)));
            m.paused_at = None;
            (MembershipStatus::Active, "RESUME")
        }
        StatusAction::Cancel => {
            if from == MembershipStatus::Cancelled {
                return refuse("cancelled");
            }
            if let Some(p) = m.paused_at.take() {
                pauses.push((p, at.max(p)));
            }
            m.cancelled_at = Some(at);
            (MembershipStatus::Cancelled, "CANCEL")
        }
        StatusAction::PastDue => {
            if from != MembershipStatus::Active {
                return refuse("past due");
            }
            (MembershipStatus::PastDue, "PAST_DUE")
        }
        StatusAction::Reinstate => {
            if from != MembershipStatus::PastDue {
                return refuse("reinstated");
            }
            (MembershipStatus::Active, "REINSTATE")
        }
    };
    m.pauses = cycles::write_pauses(&pauses);
    m.status = to.as_str().to_owned();
    m.updated_at = at;
    store::memberships::save_membership(db, scope, &m).await?;
    if action == StatusAction::Cancel {
        // Benefits end at once: every open booking gives its hold back and is priced in full.
        // A booking already paid keeps the price it was paid at (only its hold is given back).
        for mut b in store::memberships::open_bookings(db, scope, org, m.id).await? {
            let paid = store::payments::by_reference(db, scope, org, &b.reference)
                .await?
                .is_some();
            if !paid {
                super::bookings::detach(db, engine, viewer, b).await?;
            } else if b.holds_service {
                super::bookings::release(db, viewer, &mut b).await?;
                b.updated_at = at;
                store::memberships::save_booking(db, scope, &b).await?;
            }
        }
    }
    // The current cycle's counters carry its (possibly pushed) end.
    open_cycle(db, scope, &m, &plan, at).await?;
    store::memberships::insert_change(
        db,
        scope,
        change_row(&m, name, Some(from.as_str()), viewer, reason, at),
    )
    .await?;
    Ok(m)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CorrectionKind {
    Credit,
    Adjust,
    Reset,
}

/// grantMembershipCredit, adjustMembershipUsage, resetMembershipUsage: OWNER/ADMIN, on the current
/// cycle, with a reason; each is a ledger event naming its actor and reason.
pub async fn correct(
    engine: &Engine,
    viewer: &Viewer,
    id: &str,
    kind: CorrectionKind,
    quantity: Option<Decimal>,
    reason: &str,
) -> AppResult<UsageView> {
    let found = membership_for(&engine.db, viewer, id, Action::ManageMemberships, false).await?;
    let reason = required_text("reason", reason, 1000)?;
    let q = match (kind, quantity) {
        (CorrectionKind::Reset, _) => 0,
        (_, None) => return Err(AppError::bad_input("quantity is required")),
        (_, Some(q)) => Amount::parse("quantity", q)?.scaled(),
    };
    match kind {
        CorrectionKind::Credit if q <= 0 => {
            return Err(AppError::bad_input(
                "quantity of a credit must be greater than 0",
            ));
        }
        CorrectionKind::Adjust if q == 0 => {
            return Err(AppError::bad_input(
                "quantity of an adjustment must not be 0",
            ));
        }
        _ => {}
    }
    let scope = viewer.scope();
    let org = OrganizationId(found.organization_id);
    let txn = engine.db.begin_write().await?;
    let m = store::memberships::lock_membership(&*txn, scope, found.id)
        .await?
        .ok_or_else(|| AppError::not_found("membership"))?;
    let plan = plan_of(&*txn, &m).await?;
    let at = now(engine);
    let (cycle, before) = open_cycle(&*txn, scope, &m, &plan, at).await?;
    let key = CycleKey {
        org,
        membership: m.id,
        cycle: cycle.index,
    };
    let (change, event_kind, event_q) = match kind {
        CorrectionKind::Credit => (UsageChange::Credit(q), UsageEventKind::Credit, q),
        CorrectionKind::Adjust => (UsageChange::Adjust(q), UsageEventKind::Adjustment, q),
        CorrectionKind::Reset => (UsageChange::Reset, UsageEventKind::Reset, -before.used),
    };
    let Some(row) = store::memberships::change_usage(&*txn, scope, key, change).await? else {
        return Err(AppError::bad_input(match kind {
            CorrectionKind::Adjust if q < 0 => "the adjustment would take used services below zero",
            _ => "the correction takes the counter past the largest value it can hold",
        }));
    };
    store::memberships::insert_event(
        &*txn,
        scope,
        usage_event::Model {
            organization_id: m.organization_id,
            id: Uuid::now_v7(),
            metric_code: SERVICES.to_owned(),
            kind: event_kind,
            quantity: event_q,
            period_start: cycle.start.date_naive(),
            idempotency_key: None,
            reference: None,
            reason: Some(reason),
            actor: Some(viewer.sub.clone()),
            reverses_event_id: None,
            membership_id: Some(m.id),
            cycle: Some(cycle.index),
            overage: false,
            charge: 0,
            occurred_at: at,
            recorded_at: Utc::now(),
        },
    )
    .await?;
    commit_and_publish(engine, txn, &[(org, m.id)]).await?;
    Ok(UsageView::from_row(cycle, Some(&row), &plan))
}

//! Plans: the platform team's catalogue edits, and the subscription changes of an organization
//! (plan changes, cancel, reactivate, trials), each audited in subscription_history.

use std::collections::HashSet;

use chrono::{Duration, NaiveDate, Utc};
use entity::enums::{ChangeType, Enforcement, OrganizationStatus};
use entity::{plan, subscription_history};
use rust_decimal::Decimal;
use uuid::Uuid;

use super::access::{self, Action};
use super::usage::Engine;
use super::{Amount, CODE_RULE, MetricCode, OrganizationId, Viewer, optional_text, required_text};
use crate::error::{AppError, AppResult};
use crate::store;

/// A plan with its limits.
#[derive(Debug, Clone)]
pub struct PlanWithLimits {
    pub plan: plan::Model,
    pub limits: Vec<entity::plan_limit::Model>,
}

pub struct LimitInput {
    pub metric: String,
    pub included: Option<Decimal>,
    pub enforcement: Enforcement,
    pub overage_unit_price: Option<Decimal>,
}

pub struct UpsertPlan {
    pub code: String,
    pub name: String,
    pub rank: i32,
    pub price_monthly: Decimal,
    pub currency: Option<String>,
    pub trial_days: Option<i32>,
    pub application_fee_pct: Option<Decimal>,
    pub active: Option<bool>,
    pub limits: Vec<LimitInput>,
    /// The Stripe Price billing this plan (none: not billed through Stripe).
    pub stripe_price_id: Option<String>,
    /// Why, for the audit row (default: "plan created" or "plan updated").
    pub reason: Option<String>,
}

/// A plan's definition as JSON (amounts as decimal strings, limits by metric), for its audit rows.
async fn definition<C: sea_orm::ConnectionTrait>(db: &C, p: &plan::Model) -> AppResult<String> {
    use sea_orm::ActiveEnum;
    let limits = store::catalog::limits_for_plans(db, &[p.id]).await?;
    let amount = |v: i64| Amount::from_scaled(v).to_decimal().normalize().to_string();
    let limits: Vec<serde_json::Value> = limits
        .iter()
        .map(|l| {
            serde_json::json!({
                "metric": l.metric_code,
                "included": l.included.map(amount),
                "enforcement": l.enforcement.to_value(),
                "overageUnitPrice": l.overage_unit_price.map(amount),
            })
        })
        .collect();
    Ok(serde_json::json!({
        "name": p.name,
        "rank": p.rank,
        "priceMonthly": amount(p.price_monthly),
        "currency": p.currency,
        "trialDays": p.trial_days,
        "applicationFeePct": amount(p.application_fee_pct),
        "active": p.active,
        "stripePriceId": p.stripe_price_id,
        "limits": limits,
    })
    .to_string())
}

/// upsertPlan: create or update a plan by code, its limits replaced as given, with an audit row
/// (actor, reason, the definition before and after) in the same transaction. Saving a definition
/// identical to the current one changes nothing and writes no row.
pub async fn upsert(engine: &Engine, viewer: &Viewer, input: UpsertPlan) -> AppResult<plan::Model> {
    access::require_platform(viewer)?;
    let reason = optional_text("reason", input.reason.as_deref(), 500)?;
    let code = MetricCode::parse(&input.code).map_err(|_| {
        AppError::bad_input(format!(
            "invalid plan code {}: {CODE_RULE}",
            crate::error::quote(&input.code)
        ))
    })?;
    let name = required_text("name", &input.name, 200)?;
    let price = Amount::parse("priceMonthly", input.price_monthly)?;
    if price.is_negative() {
        return Err(AppError::bad_input("priceMonthly must be 0 or more"));
    }
    let currency = input
        .currency
        .unwrap_or_else(|| "USD".into())
        .trim()
        .to_ascii_uppercase();
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(AppError::bad_input(
            "currency must be a three-letter ISO code",
        ));
    }
    let trial_days = input.trial_days.unwrap_or(14);
    if !(0..=365).contains(&trial_days) {
        return Err(AppError::bad_input("trialDays must be between 0 and 365"));
    }
    let fee = Amount::parse(
        "applicationFeePct",
        input.application_fee_pct.unwrap_or_default(),
    )?;
    if fee.is_negative() || fee.to_decimal() > Decimal::ONE_HUNDRED {
        return Err(AppError::bad_input(
            "applicationFeePct must be between 0 and 100",
        ));
    }
    let stripe_price_id = optional_text("stripePriceId", input.stripe_price_id.as_deref(), 255)?;
    let catalog = engine.catalog().await?;
    let kinds = &catalog.kinds;
    let mut seen = HashSet::new();
    let mut limits = Vec::with_capacity(input.limits.len());
    for l in input.limits {
        let metric = MetricCode::parse(&l.metric)?;
        if !kinds.contains_key(metric.as_str()) {
            return Err(AppError::bad_input(format!(
                "unknown metric {:?}",
                l.metric
            )));
        }
        if !seen.insert(metric.as_str().to_owned()) {
            return Err(AppError::bad_input(format!(
                "metric {:?} is limited twice",
                l.metric
            )));
        }
        let included = l
            .included
            .map(|d| Amount::parse("included", d))
            .transpose()?;
        if included.is_some_and(Amount::is_negative) {
            return Err(AppError::bad_input("included must be 0 or more"));
        }
        let overage = l
            .overage_unit_price
            .map(|d| Amount::parse("overageUnitPrice", d))
            .transpose()?;
        if overage.is_some_and(Amount::is_negative) {
            return Err(AppError::bad_input("overageUnitPrice must be 0 or more"));
        }
        if overage.is_some() && l.enforcement != Enforcement::Overage {
            return Err(AppError::bad_input(
                "overageUnitPrice is only for OVERAGE enforcement",
            ));
        }
        if l.enforcement == Enforcement::Overage && overage.is_none() {
            return Err(AppError::bad_input(
                "OVERAGE enforcement needs an overageUnitPrice",
            ));
        }
        limits.push(store::catalog::NewLimit {
            metric_code: metric.as_str().to_owned(),
            included: included.map(Amount::scaled),
            enforcement: l.enforcement,
            overage_unit_price: overage.map(Amount::scaled),
        });
    }
    let txn = engine.db.begin_write().await?;
    if engine.db.is_postgres() {
        // Plan upserts take turns across replicas (SQLite writers already do): each audit row's
        // `before` is what the previous change left, and two plans cannot take one rank at once.
        store::execute(
            &txn,
            "SELECT pg_advisory_xact_lock(hashtext('tollgate.plans'))",
            vec![],
        )
        .await?;
    }
    // Ranks order the plans (an upgrade goes up, a downgrade down): each plan has its own.
    if let Some(other) = store::catalog::plans(&txn, true)
        .await?
        .into_iter()
        .find(|p| p.rank == input.rank && p.code != code.as_str())
    {
        return Err(AppError::conflict(format!(
            "rank {} belongs to plan {:?}: each plan has its own rank",
            input.rank, other.code
        )));
    }
    // A Stripe Price bills one plan: a subscription on it must name one plan to move to.
    if let Some(price) = &stripe_price_id
        && let Some(other) = store::catalog::plans(&txn, true)
            .await?
            .into_iter()
            .find(|p| p.stripe_price_id.as_deref() == Some(price) && p.code != code.as_str())
    {
        return Err(AppError::conflict(format!(
            "stripePriceId {} bills plan {:?}: each price bills one plan",
            crate::error::quote(price),
            other.code
        )));
    }
    let before = match store::catalog::plan_by_code(&txn, code.as_str()).await? {
        Some(p) => Some(definition(&txn, &p).await?),
        None => None,
    };
    let id = store::catalog::upsert_plan(
        &txn,
        store::catalog::PlanFields {
            code: code.as_str().to_owned(),
            name,
            rank: input.rank,
            price_monthly: price.scaled(),
            currency,
            trial_days,
            application_fee_pct: fee.scaled(),
            active: input.active.unwrap_or(true),
            stripe_price_id,
        },
        limits,
    )
    .await?;
    let saved = store::catalog::plan_by_id(&txn, id)
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("plan vanished")))?;
    let after = definition(&txn, &saved).await?;
    if before.as_deref() == Some(after.as_str()) {
        // Nothing changed: no audit row, no notification, the caches stay.
        txn.rollback().await?;
        return Ok(saved);
    }
    let saved_before = before.is_some();
    let reason = reason.unwrap_or_else(|| {
        if saved_before {
            "plan updated"
        } else {
            "plan created"
        }
        .to_owned()
    });
    store::catalog::insert_plan_history(
        &txn,
        entity::plan_history::Model {
            id: Uuid::now_v7(),
            plan_id: id,
            plan_code: saved.code.clone(),
            actor: viewer.sub.clone(),
            reason,
            before,
            after,
            created_at: Utc::now(),
        },
    )
    .await?;
    // Every organization on this plan now has other limits: its stored flags are re-evaluated in
    // this transaction (counters still equal what recompute derives from the ledger), alerts whose
    // conditions now hold are raised, and every replica drops its cached entitlement state (this
    // one at once, the others when the notification arrives).
    let affected = if saved_before {
        engine.reevaluate_plan(&txn, viewer.scope(), id).await?
    } else {
        Vec::new()
    };
    let changes: Vec<_> = affected
        .iter()
        .map(|(org, alerts)| (*org, alerts.as_slice()))
        .collect();
    engine.commit_and_publish_all(txn, &changes, true).await?;
    Ok(saved)
}

#[derive(Debug, Clone)]
pub enum SubscriptionAction {
    ChangePlan {
        plan_code: String,
        effective_date: Option<NaiveDate>,
    },
    Cancel,
    Reactivate,
    StartTrial {
        plan_code: Option<String>,
    },
    EndTrial,
}

/// A subscription change: checked against the current state under the organization's period lock,
/// applied to the organization and audited in the same transaction; the current period is then
/// re-evaluated against the (new) limits with alerts re-armed.
pub async fn change(
    engine: &Engine,
    viewer: &Viewer,
    org_id: Option<&str>,
    action: SubscriptionAction,
    reason: Option<&str>,
) -> AppResult<subscription_history::Model> {
    let oid = access::target_org(viewer, org_id)?;
    access::authorize(&engine.db, viewer, oid, Action::ManageSubscription).await?;
    let reason = optional_text("reason", reason, 1000)?;
    let scope = viewer.scope();
    let txn = engine.db.begin_write().await?;
    store::ledger::lock_period(&txn, scope, oid, super::Period::current()).await?;
    let org = store::orgs::find(&txn, scope, oid)
        .await?
        .ok_or_else(|| AppError::not_found("organization"))?;
    let current_plan = match org.plan_id {
        Some(id) => store::catalog::plan_by_id(&txn, id).await?,
        None => None,
    };
    let today = Utc::now().date_naive();
    let active_plan = |code: &str| {
        let code = code.to_owned();
        let txn = &txn;
        async move {
            store::catalog::plan_by_code(txn, &code)
                .await?
                .filter(|p| p.active)
                .ok_or_else(|| {
                    AppError::bad_input(format!(
                        "unknown or inactive plan {}",
                        crate::error::quote(&code)
                    ))
                })
        }
    };
    let (change_type, new_plan, status, trial_ends_at, effective) = match action {
        SubscriptionAction::ChangePlan {
            plan_code,
            effective_date,
        } => {
            if org.status == OrganizationStatus::Cancelled {
                return Err(AppError::conflict(
                    "the subscription is cancelled: reactivate it first",
                ));
            }
            let target = active_plan(&plan_code).await?;
            if current_plan.as_ref().is_some_and(|p| p.id == target.id) {
                return Err(AppError::bad_input(
                    "the organization is already on this plan",
                ));
            }
            // A change applies now; its recorded date may say it was agreed earlier (within the
            // organization's life), never that it lies ahead: nothing would apply it then.
            if let Some(d) = effective_date {
                if d > today {
                    return Err(AppError::bad_input(
                        "effectiveDate may not be in the future: a plan change applies when it is made",
                    ));
                }
                if d < org.created_at.date_naive() {
                    return Err(AppError::bad_input(
                        "effectiveDate may not be before the organization was created",
                    ));
                }
            }
            let kind = match &current_plan {
                Some(p) if target.rank <= p.rank => ChangeType::Downgrade,
                _ => ChangeType::Upgrade,
            };
            (
                kind,
                Some(target),
                org.status,
                org.trial_ends_at,
                effective_date.unwrap_or(today),
            )
        }
        SubscriptionAction::Cancel => {
            if org.status == OrganizationStatus::Cancelled {
                return Err(AppError::conflict("the subscription is already cancelled"));
            }
            (
                ChangeType::Cancelled,
                current_plan.clone(),
                OrganizationStatus::Cancelled,
                None,
                today,
            )
        }
        SubscriptionAction::Reactivate => {
            if !matches!(
                org.status,
                OrganizationStatus::Cancelled | OrganizationStatus::Suspended
            ) {
                return Err(AppError::conflict(
                    "only a cancelled or suspended subscription can be reactivated",
                ));
            }
            if current_plan.is_none() {
                return Err(AppError::conflict(
                    "the organization has no plan to reactivate",
                ));
            }
            (
                ChangeType::Reactivated,
                current_plan.clone(),
                OrganizationStatus::Active,
                None,
                today,
            )
        }
        SubscriptionAction::StartTrial { plan_code } => {
            if org.status == OrganizationStatus::Trialing {
                return Err(AppError::conflict("a trial is already running"));
            }
            // One trial per organization; the platform team may grant another.
            if !viewer.platform
                && store::ledger::has_history_of(&txn, scope, oid, ChangeType::TrialStarted).await?
            {
                return Err(AppError::conflict(
                    "this organization has had its trial; the platform team can grant another",
                ));
            }
            let target = match plan_code {
                Some(code) => active_plan(&code).await?,
                None => current_plan.clone().ok_or_else(|| {
                    AppError::bad_input("planCode is required: the organization has no plan")
                })?,
            };
            if target.trial_days <= 0 {
                return Err(AppError::bad_input("this plan has no trial"));
            }
            let ends = Utc::now() + Duration::days(target.trial_days.into());
            (
                ChangeType::TrialStarted,
                Some(target),
                OrganizationStatus::Trialing,
                Some(ends),
                today,
            )
        }
        SubscriptionAction::EndTrial => {
            if org.status != OrganizationStatus::Trialing {
                return Err(AppError::conflict("no trial is running"));
            }
            (
                ChangeType::TrialEnded,
                current_plan.clone(),
                OrganizationStatus::Active,
                None,
                today,
            )
        }
    };
    let new_plan_id = new_plan.as_ref().map(|p| p.id);
    store::orgs::update_subscription(
        &txn,
        scope,
        oid,
        status,
        new_plan_id.or(org.plan_id),
        trial_ends_at,
    )
    .await?;
    let row = subscription_history::Model {
        organization_id: oid.0,
        id: Uuid::now_v7(),
        old_plan_id: org.plan_id,
        new_plan_id: if change_type == ChangeType::Cancelled {
            None
        } else {
            new_plan_id
        },
        change_type,
        stripe_event_id: None,
        stripe_subscription_id: None,
        amount_paid: None,
        effective_date: effective,
        reason,
        created_at: Utc::now(),
        created_by: Some(viewer.sub.clone()),
    };
    let saved = store::ledger::insert_history(&txn, scope, row)
        .await?
        .ok_or_else(|| AppError::not_found("organization"))?;
    let alerts = engine
        .rearm_and_reevaluate(&txn, scope, oid, new_plan_id.or(org.plan_id))
        .await?;
    engine
        .commit_and_publish(txn, OrganizationId(oid.0), &alerts)
        .await?;
    Ok(saved)
}

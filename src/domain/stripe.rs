//! Stripe's webhooks applied to Tollgate's rows, each event once and in order per object. The
//! signature is checked by the HTTP layer (async-stripe's webhook module) before anything here
//! runs; the event is then read leniently as JSON (only the fields acted on), because Stripe sends
//! each account's pinned API version and its objects change shape between versions.
//!
//! - `customer.subscription.created|updated|deleted`: the organization (by its Stripe customer, or
//!   `metadata.organization_id`) moves to the plan whose `stripePriceId` is the subscription's
//!   price, its status follows Stripe's, a subscription_history row says how (UPGRADE, DOWNGRADE,
//!   CANCELLED, REACTIVATED, TRIAL_STARTED, TRIAL_ENDED) with the event, subscription and amount,
//!   and its limits are re-evaluated with alerts re-armed, as for changePlan.
//! - `invoice.paid` / `invoice.payment_succeeded`: PAST_DUE becomes ACTIVE; `invoice.payment_failed`:
//!   PAST_DUE.
//! - `charge.refunded`: the refunds of a recorded payment, each once, never more than it paid.
//! - Anything else is acknowledged and changes nothing.

use chrono::{DateTime, Utc};
use entity::enums::{ChangeType, OrganizationStatus};
use entity::{organization, subscription_history};
use rust_decimal::Decimal;
use serde_json::Value;
use uuid::Uuid;

use super::money::Currency;
use super::usage::Engine;
use super::{Amount, OrganizationId, Period, Scope};
use crate::error::{AppError, AppResult};
use crate::store;

/// An event as the HTTP layer verified it.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub created: i64,
    /// The connected account the event happened on (Connect events).
    pub account: Option<String>,
    pub object: Value,
}

impl Event {
    /// Reads the fields acted on; None when the body is not a Stripe event at all.
    pub fn parse(body: &Value) -> Option<Event> {
        Some(Event {
            id: body.get("id")?.as_str()?.to_owned(),
            kind: body.get("type")?.as_str()?.to_owned(),
            created: body.get("created")?.as_i64()?,
            account: body
                .get("account")
                .and_then(Value::as_str)
                .map(str::to_owned),
            object: body.get("data")?.get("object")?.clone(),
        })
    }

    fn object_id(&self) -> Option<&str> {
        self.object.get("id").and_then(Value::as_str)
    }
}

/// What became of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// Received before: nothing changed.
    Replay,
    /// Older than the newest event applied to the same object: nothing changed.
    Stale,
    /// Not a type Tollgate acts on, or about nothing Tollgate knows: nothing changed.
    Ignored,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Replay => "replay",
            Outcome::Stale => "stale",
            Outcome::Ignored => "ignored",
        }
    }
}

/// Stripe's subscription status as the organization's.
fn status_of(stripe: &str) -> Option<OrganizationStatus> {
    Some(match stripe {
        "trialing" => OrganizationStatus::Trialing,
        "active" => OrganizationStatus::Active,
        "past_due" => OrganizationStatus::PastDue,
        "canceled" | "incomplete_expired" => OrganizationStatus::Cancelled,
        "unpaid" | "paused" => OrganizationStatus::Suspended,
        // `incomplete`: the first payment has not gone through; nothing to follow yet.
        _ => return None,
    })
}

/// The subscription's price id: `items.data[0].price.id`, or the older `plan.id` shapes.
fn price_id(sub: &Value) -> Option<&str> {
    let item = sub.pointer("/items/data/0");
    item.and_then(|i| i.pointer("/price/id"))
        .or_else(|| item.and_then(|i| i.pointer("/plan/id")))
        .or_else(|| sub.pointer("/plan/id"))
        .and_then(Value::as_str)
}

/// The subscription's amount per period (unit amount times quantity), exact, in major units.
fn subscription_amount(sub: &Value) -> Option<Decimal> {
    let item = sub.pointer("/items/data/0")?;
    let (minor, currency) = item
        .pointer("/price/unit_amount")
        .and_then(Value::as_i64)
        .zip(item.pointer("/price/currency").and_then(Value::as_str))
        .or_else(|| {
            item.pointer("/plan/amount")
                .and_then(Value::as_i64)
                .zip(item.pointer("/plan/currency").and_then(Value::as_str))
        })?;
    let quantity = item.get("quantity").and_then(Value::as_i64).unwrap_or(1);
    major_units(minor.checked_mul(quantity)?, currency)
}

/// A Stripe amount in minor units as a decimal in major units, exact.
fn major_units(minor: i64, currency: &str) -> Option<Decimal> {
    let c = Currency::parse(currency).ok()?;
    Some(Decimal::new(minor, c.minor_units()))
}

/// Applies a verified event once: its id is claimed first, in the transaction of its effects, so a
/// replay (a concurrent one waits for this transaction) finds it and changes nothing.
pub async fn apply(engine: &Engine, event: Event) -> AppResult<Outcome> {
    let txn = engine.db.begin_write().await?;
    let object_id = event.object_id().map(str::to_owned);
    let claimed = store::stripe::claim_event(
        &*txn,
        &event.id,
        &event.kind,
        object_id.as_deref(),
        event.created,
        None,
        "received",
    )
    .await?;
    if !claimed {
        txn.rollback().await?;
        return Ok(Outcome::Replay);
    }
    let handled = matches!(
        event.kind.as_str(),
        "customer.subscription.created"
            | "customer.subscription.updated"
            | "customer.subscription.deleted"
            | "invoice.paid"
            | "invoice.payment_succeeded"
            | "invoice.payment_failed"
            | "charge.refunded"
            | "account.updated"
            | "payment_intent.succeeded"
    );
    let outcome = |o: Outcome, org: Option<OrganizationId>| {
        let (txn, id) = (&txn, &event.id);
        async move {
            store::stripe::set_outcome(&**txn, id, o.as_str(), org.map(|o| o.0))
                .await
                .map(|_| o)
        }
    };
    if !handled {
        let done = outcome(Outcome::Ignored, None).await?;
        txn.commit().await?;
        return Ok(done);
    }
    let Some(object_id) = object_id else {
        txn.rollback().await?;
        return Err(AppError::bad_input("the event's object has no id"));
    };
    if !store::stripe::advance_object(&*txn, &object_id, event.created, &event.id).await? {
        let done = outcome(Outcome::Stale, None).await?;
        txn.commit().await?;
        return Ok(done);
    }
    let effect = match event.kind.as_str() {
        "charge.refunded" => refunds(&txn, &event).await?,
        "account.updated" => account_updated(&txn, &event).await?,
        "payment_intent.succeeded" => payment_succeeded(engine, &txn, &event).await?,
        kind if kind.starts_with("invoice.") => invoice(&txn, &event).await?,
        // On a connected account: an organization's customer's subscription (a membership).
        _ if event.account.is_some() => membership_subscription(engine, &txn, &event).await?,
        _ => subscription(engine, &txn, &event).await?,
    };
    match effect {
        Some(Effect {
            org,
            alerts,
            membership,
        }) => {
            outcome(Outcome::Applied, Some(org)).await?;
            match membership {
                Some(m) => super::memberships::commit_and_publish(engine, txn, &[(org, m)]).await?,
                None => engine.commit_and_publish(txn, org, &alerts).await?,
            }
            Ok(Outcome::Applied)
        }
        None => {
            let done = outcome(Outcome::Ignored, None).await?;
            txn.commit().await?;
            Ok(done)
        }
    }
}

/// What an event changed: the organization, and the alerts to publish after commit.
struct Effect {
    org: OrganizationId,
    alerts: Vec<entity::usage_alert::Model>,
    /// A membership that changed (a connected account's subscription event).
    membership: Option<uuid::Uuid>,
}

impl Effect {
    /// A change of an organization, with the alerts it raised.
    fn org(org: OrganizationId, alerts: Vec<entity::usage_alert::Model>) -> Option<Self> {
        Some(Effect {
            org,
            alerts,
            membership: None,
        })
    }
}

/// The organization a Stripe customer (or `metadata.organization_id`) belongs to.
async fn org_of(
    txn: &crate::store::db::WriteTxn,
    object: &Value,
) -> AppResult<Option<organization::Model>> {
    if let Some(customer) = object.get("customer").and_then(Value::as_str)
        && let Some(org) =
            store::orgs::by_stripe_customer(&**txn, Scope::Platform, customer).await?
    {
        return Ok(Some(org));
    }
    let Some(id) = object
        .pointer("/metadata/organization_id")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok())
    else {
        return Ok(None);
    };
    Ok(store::orgs::find(&**txn, Scope::Platform, OrganizationId(id)).await?)
}

async fn subscription(
    engine: &Engine,
    txn: &crate::store::db::WriteTxn,
    event: &Event,
) -> AppResult<Option<Effect>> {
    let sub = &event.object;
    let Some(org) = org_of(txn, sub).await? else {
        tracing::warn!(event = %event.id, "a subscription event names no known organization");
        return Ok(None);
    };
    let oid = OrganizationId(org.id);
    store::ledger::lock_period(&**txn, Scope::Platform, oid, Period::current()).await?;
    let deleted = event.kind == "customer.subscription.deleted";
    let stripe_status = sub.get("status").and_then(Value::as_str).unwrap_or("");
    let status = if deleted {
        OrganizationStatus::Cancelled
    } else {
        match status_of(stripe_status) {
            Some(s) => s,
            None => org.status,
        }
    };
    let plans = store::catalog::plans(&**txn, true).await?;
    let current = org
        .plan_id
        .and_then(|id| plans.iter().find(|p| p.id == id).cloned());
    let target = match price_id(sub) {
        Some(price) => {
            let found = plans
                .iter()
                .find(|p| p.stripe_price_id.as_deref() == Some(price))
                .cloned();
            if found.is_none() && !deleted {
                tracing::warn!(event = %event.id, price, "no plan has this stripePriceId; the plan stays");
            }
            found
        }
        None => None,
    }
    .or_else(|| current.clone());
    let change = if status == OrganizationStatus::Cancelled {
        (org.status != OrganizationStatus::Cancelled).then_some(ChangeType::Cancelled)
    } else if matches!(
        org.status,
        OrganizationStatus::Cancelled | OrganizationStatus::Suspended
    ) && matches!(
        status,
        OrganizationStatus::Active | OrganizationStatus::Trialing
    ) {
        Some(ChangeType::Reactivated)
    } else if status == OrganizationStatus::Trialing && org.status != OrganizationStatus::Trialing {
        Some(ChangeType::TrialStarted)
    } else if org.status == OrganizationStatus::Trialing && status == OrganizationStatus::Active {
        Some(ChangeType::TrialEnded)
    } else {
        match (&current, &target) {
            (Some(c), Some(t)) if c.id != t.id => Some(if t.rank > c.rank {
                ChangeType::Upgrade
            } else {
                ChangeType::Downgrade
            }),
            (None, Some(_)) => Some(ChangeType::Upgrade),
            _ => None,
        }
    };
    let trial_end = (status == OrganizationStatus::Trialing)
        .then(|| sub.get("trial_end").and_then(Value::as_i64))
        .flatten()
        .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
        .or(if status == OrganizationStatus::Trialing {
            org.trial_ends_at
        } else {
            None
        });
    let plan_id = target.as_ref().map(|p| p.id).or(org.plan_id);
    store::orgs::update_subscription(&**txn, Scope::Platform, oid, status, plan_id, trial_end)
        .await?;
    let customer = sub.get("customer").and_then(Value::as_str);
    let subscription_id = sub.get("id").and_then(Value::as_str);
    store::orgs::set_stripe_ids(
        &**txn,
        Scope::Platform,
        oid,
        customer.or(org.stripe_customer_id.as_deref()),
        if deleted { None } else { subscription_id },
    )
    .await?;
    if let Some(change_type) = change {
        let amount = subscription_amount(sub)
            .map(|d| Amount::parse("amount", d))
            .transpose()?
            .map(Amount::scaled);
        let row = subscription_history::Model {
            organization_id: org.id,
            id: Uuid::now_v7(),
            old_plan_id: org.plan_id,
            new_plan_id: if change_type == ChangeType::Cancelled {
                None
            } else {
                plan_id
            },
            change_type,
            stripe_event_id: Some(event.id.clone()),
            stripe_subscription_id: subscription_id.map(str::to_owned),
            amount_paid: amount,
            effective_date: DateTime::<Utc>::from_timestamp(event.created, 0)
                .map(|t| t.date_naive())
                .unwrap_or_else(|| Utc::now().date_naive()),
            reason: Some(format!("stripe {}", event.kind)),
            created_at: Utc::now(),
            created_by: Some("stripe".to_owned()),
        };
        store::ledger::insert_history(&**txn, Scope::Platform, row).await?;
    }
    // New limits re-arm alerts (as changePlan does); a status alone changes no limit.
    let alerts = if plan_id != org.plan_id {
        engine
            .rearm_and_reevaluate(txn, Scope::Platform, oid, plan_id)
            .await?
    } else {
        Vec::new()
    };
    Ok(Effect::org(oid, alerts))
}

async fn invoice(txn: &crate::store::db::WriteTxn, event: &Event) -> AppResult<Option<Effect>> {
    let Some(org) = org_of(txn, &event.object).await? else {
        return Ok(None);
    };
    let oid = OrganizationId(org.id);
    let status = match event.kind.as_str() {
        "invoice.payment_failed" if org.status == OrganizationStatus::Active => {
            Some(OrganizationStatus::PastDue)
        }
        "invoice.paid" | "invoice.payment_succeeded"
            if org.status == OrganizationStatus::PastDue =>
        {
            Some(OrganizationStatus::Active)
        }
        _ => None,
    };
    if let Some(status) = status {
        store::orgs::set_status(&**txn, Scope::Platform, oid, status).await?;
    }
    // What the invoice says was paid, kept with the event (the seed's amount_paid).
    if event.kind != "invoice.payment_failed"
        && let (Some(minor), Some(currency)) = (
            event.object.get("amount_paid").and_then(Value::as_i64),
            event.object.get("currency").and_then(Value::as_str),
        )
        && let Some(paid) = major_units(minor, currency)
    {
        let scaled = Amount::parse("amount_paid", paid)?.scaled();
        store::stripe::set_amount_paid(&**txn, &event.id, scaled, &currency.to_ascii_lowercase())
            .await?;
    }
    Ok(Effect::org(oid, Vec::new()))
}

/// A subscription event on a connected account: the membership billed by that subscription
/// follows it. past_due or unpaid makes an ACTIVE membership PAST_DUE (no benefits), active or
/// trialing makes a PAST_DUE one ACTIVE again, canceled (or deleted) cancels it (its holds given
/// back); each change audited with the event id as its reason. Anything else changes nothing.
async fn membership_subscription(
    engine: &Engine,
    txn: &crate::store::db::WriteTxn,
    event: &Event,
) -> AppResult<Option<Effect>> {
    use super::memberships::MembershipStatus as M;
    use super::memberships::admin::{StatusAction, change_status_in};
    let (Some(account), Some(sub)) = (event.account.as_deref(), event.object_id()) else {
        return Ok(None);
    };
    let Some(known) = store::connect::by_stripe_account(&**txn, Scope::Platform, account).await?
    else {
        return Ok(None);
    };
    let org = OrganizationId(known.organization_id);
    let Some(m) =
        store::memberships::membership_by_subscription(&**txn, Scope::Platform, org, sub).await?
    else {
        return Ok(None);
    };
    let stripe_status = event
        .object
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("");
    let deleted = event.kind == "customer.subscription.deleted";
    let action = match (M::parse(&m.status), stripe_status) {
        (M::Cancelled, _) => None,
        (_, _) if deleted => Some(StatusAction::Cancel),
        (_, "canceled" | "incomplete_expired") => Some(StatusAction::Cancel),
        (M::Active, "past_due" | "unpaid") => Some(StatusAction::PastDue),
        (M::PastDue, "active" | "trialing") => Some(StatusAction::Reinstate),
        _ => None,
    };
    let Some(action) = action else {
        return Ok(None);
    };
    let stripe = super::Viewer {
        sub: "stripe".to_owned(),
        org_id: None,
        role: None,
        platform: true,
    };
    let reason = Some(format!("Stripe event {}", event.id));
    let changed = change_status_in(engine, &**txn, &stripe, m.id, action, reason).await?;
    Ok(Some(Effect {
        org,
        alerts: Vec::new(),
        membership: Some(changed.id),
    }))
}

/// account.updated: the organization's connected account as Stripe now describes it.
async fn account_updated(
    txn: &crate::store::db::WriteTxn,
    event: &Event,
) -> AppResult<Option<Effect>> {
    let Some(id) = event.object.get("id").and_then(Value::as_str) else {
        return Ok(None);
    };
    let Some(known) = store::connect::by_stripe_account(&**txn, Scope::Platform, id).await? else {
        tracing::warn!(event = %event.id, account = id, "an account Tollgate did not create");
        return Ok(None);
    };
    let org = OrganizationId(known.organization_id);
    let Some(row) = super::connect::from_stripe(org, &event.object) else {
        return Ok(None);
    };
    store::connect::upsert(&**txn, Scope::Platform, &row).await?;
    Ok(Effect::org(org, Vec::new()))
}

/// payment_intent.succeeded on a connected account: the payment, recorded as recordPayment would
/// (once per PaymentIntent, with its fee and the revenue metric).
async fn payment_succeeded(
    engine: &Engine,
    txn: &crate::store::db::WriteTxn,
    event: &Event,
) -> AppResult<Option<Effect>> {
    let Some(account) = event.account.as_deref() else {
        // A payment on the platform's own account (its plan fees): not an organization's revenue.
        return Ok(None);
    };
    let Some(known) = store::connect::by_stripe_account(&**txn, Scope::Platform, account).await?
    else {
        return Ok(None);
    };
    let org = OrganizationId(known.organization_id);
    let Some(org_row) = store::orgs::find(&**txn, Scope::Platform, org).await? else {
        return Ok(None);
    };
    let pi = &event.object;
    let (Some(intent), Some(currency)) = (
        pi.get("id").and_then(Value::as_str),
        pi.get("currency").and_then(Value::as_str),
    ) else {
        return Ok(None);
    };
    let Some(minor) = pi
        .get("amount_received")
        .or_else(|| pi.get("amount"))
        .and_then(Value::as_i64)
    else {
        return Ok(None);
    };
    let Some(amount) = major_units(minor, currency) else {
        return Ok(None);
    };
    let stripe = super::Viewer {
        sub: "stripe".to_owned(),
        org_id: None,
        role: None,
        platform: true,
    };
    let input = super::money::PaymentInput {
        organization_id: None,
        stripe_payment_intent_id: intent.to_owned(),
        amount,
        currency: currency.to_owned(),
        reference: pi
            .pointer("/metadata/reference")
            .and_then(Value::as_str)
            .map(str::to_owned),
        occurred_at: pi
            .get("created")
            .and_then(Value::as_i64)
            .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0)),
    };
    let alerts =
        match super::money::record_payment_in(engine, txn, &stripe, &org_row, input).await? {
            super::money::Recorded::New(_, alerts) => alerts,
            super::money::Recorded::Existing(_) => Vec::new(),
        };
    Ok(Effect::org(org, alerts))
}

async fn refunds(txn: &crate::store::db::WriteTxn, event: &Event) -> AppResult<Option<Effect>> {
    let charge = &event.object;
    let Some(intent) = charge.get("payment_intent").and_then(Value::as_str) else {
        return Ok(None);
    };
    let Some(payment) = store::payments::by_intent(&**txn, Scope::Platform, intent).await? else {
        if event.account.is_some() {
            // A connected account's payment not recorded yet (Stripe does not promise order):
            // refused, so Stripe sends the refund again once the payment is in.
            return Err(AppError::internal(anyhow::anyhow!(
                "a refund of payment {intent} arrived before the payment"
            )));
        }
        // The platform's own charge (its plans' invoices): no organization's revenue.
        return Ok(None);
    };
    let currency = charge
        .get("currency")
        .and_then(Value::as_str)
        .unwrap_or(&payment.currency)
        .to_owned();
    let refunds = charge
        .pointer("/refunds/data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut remaining = payment.amount - payment.refunded_amount;
    for r in refunds {
        let (Some(id), Some(minor)) = (
            r.get("id").and_then(Value::as_str),
            r.get("amount").and_then(Value::as_i64),
        ) else {
            continue;
        };
        let Some(amount) = major_units(minor, &currency) else {
            continue;
        };
        let scaled = Amount::parse("refund", amount)?.scaled().min(remaining);
        if scaled <= 0 {
            continue;
        }
        let at = r
            .get("created")
            .and_then(Value::as_i64)
            .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
            .unwrap_or_else(Utc::now);
        let inserted = store::payments::insert_refund(
            &**txn,
            Scope::Platform,
            entity::payment_refund::Model {
                id: Uuid::now_v7(),
                organization_id: payment.organization_id,
                payment_id: payment.id,
                stripe_refund_id: id.to_owned(),
                amount: scaled,
                occurred_at: at,
                period_start: Period::of_instant(at).start,
                created_at: Utc::now(),
            },
        )
        .await?;
        if inserted {
            remaining -= scaled;
        }
    }
    // Newer API versions leave the refunds out of the charge: what its amount_refunded adds to what
    // is recorded counts once, as one refund named by the charge and that total.
    if let (Some(total_minor), Some(charge_id)) = (
        charge.get("amount_refunded").and_then(Value::as_i64),
        charge.get("id").and_then(Value::as_str),
    ) && let Some(total) = major_units(total_minor, &currency)
    {
        let recorded = store::payments::refunded_total(&**txn, Scope::Platform, &payment).await?;
        let missing =
            (Amount::parse("refund", total)?.scaled() - recorded).min(payment.amount - recorded);
        if missing > 0 {
            let at = DateTime::<Utc>::from_timestamp(event.created, 0).unwrap_or_else(Utc::now);
            store::payments::insert_refund(
                &**txn,
                Scope::Platform,
                entity::payment_refund::Model {
                    id: Uuid::now_v7(),
                    organization_id: payment.organization_id,
                    payment_id: payment.id,
                    stripe_refund_id: format!("{charge_id}:{total_minor}"),
                    amount: missing,
                    occurred_at: at,
                    period_start: Period::of_instant(at).start,
                    created_at: Utc::now(),
                },
            )
            .await?;
        }
    }
    store::payments::set_refunded(&**txn, Scope::Platform, &payment).await?;
    Ok(Effect::org(
        OrganizationId(payment.organization_id),
        Vec::new(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prices_are_read_from_every_shape() {
        assert_eq!(
            price_id(&json!({ "items": { "data": [{ "price": { "id": "price_a" } }] } })),
            Some("price_a")
        );
        assert_eq!(
            price_id(&json!({ "items": { "data": [{ "plan": { "id": "plan_b" } }] } })),
            Some("plan_b")
        );
        assert_eq!(
            price_id(&json!({ "plan": { "id": "plan_c" } })),
            Some("plan_c")
        );
        assert_eq!(price_id(&json!({})), None);
    }

    #[test]
    fn amounts_are_exact_in_major_units() {
        let sub = json!({ "items": { "data": [{ "quantity": 2, "price": { "unit_amount": 4200, "currency": "usd" } }] } });
        assert_eq!(subscription_amount(&sub), Some(Decimal::new(8400, 2)));
        let yen =
            json!({ "items": { "data": [{ "plan": { "amount": 1000, "currency": "jpy" } }] } });
        assert_eq!(subscription_amount(&yen), Some(Decimal::new(1000, 0)));
        assert_eq!(status_of("unpaid"), Some(OrganizationStatus::Suspended));
        assert_eq!(status_of("incomplete"), None);
    }
}

//! Overage billed through Stripe (seed 002): `billOverage` turns each organization's OVERAGE units
//! of a closed period into one charge per organization, period and metric (unique, so billing again
//! creates nothing), and the outbox sends each PENDING charge to Stripe as an invoice item on the
//! organization's customer, with the charge's id as the Idempotency-Key: a resend after a crash
//! between Stripe's answer and the commit gets Stripe's first answer, so a charge is billed once.
//! Network errors and 5xx are retried with backoff; a refusal (4xx) is FAILED with Stripe's message.
//! The platform's revenue per period adds the overage Stripe accepted.

use chrono::{Duration, NaiveDate, Utc};
use entity::overage_charge;
use rust_decimal::Decimal;

use super::money::Currency;
use super::usage::Engine;
use super::{Amount, OrganizationId, Period, Scope, Viewer, access};
use crate::error::{AppError, AppResult};
use crate::store;

/// How long a sender holds its claim on a charge (a sender that died lets it go after this).
pub const CLAIM: std::time::Duration = std::time::Duration::from_secs(60);

/// The Idempotency-Key of a charge's invoice item.
pub fn idempotency_key(charge: uuid::Uuid) -> String {
    format!("tollgate-overage-{charge}")
}

/// What an organization owes for a metric's overage in a period (from its counters now), or a
/// membership for one service past its allowance. Amounts scaled.
pub(crate) struct Owed {
    pub org: OrganizationId,
    pub metric: String,
    pub quantity: i64,
    pub unit_price: i64,
    pub amount: i64,
    pub currency: String,
}

impl Owed {
    /// A new PENDING charge of it, for the outbox, its history starting with `note`.
    pub(crate) fn charge(&self, period_start: NaiveDate, note: String) -> overage_charge::Model {
        let now = Utc::now();
        overage_charge::Model {
            id: uuid::Uuid::now_v7(),
            organization_id: self.org.0,
            metric_code: self.metric.clone(),
            period_start,
            quantity: self.quantity,
            unit_price: self.unit_price,
            amount: self.amount,
            currency: self.currency.clone(),
            status: "PENDING".to_owned(),
            stripe_id: None,
            attempts: 0,
            last_error: None,
            next_attempt_at: now,
            claimed_by: None,
            claimed_until: None,
            sent_at: None,
            sent_period: None,
            history: with_note("[]", note),
            membership_id: None,
            booking_id: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// The overage owed in `period` by each of `orgs`, per metric (zero where nothing is owed).
async fn owed(
    engine: &Engine,
    orgs: Vec<entity::organization::Model>,
    period: Period,
) -> AppResult<Vec<Owed>> {
    let plans = store::catalog::plans(&engine.db, true).await?;
    let mut out = Vec::new();
    for summary in engine
        .summaries(&engine.db, Scope::Platform, orgs, period)
        .await?
    {
        let currency = summary
            .org
            .plan_id
            .and_then(|id| plans.iter().find(|p| p.id == id))
            .map(|p| p.currency.to_ascii_lowercase())
            .unwrap_or_else(|| super::money::DEFAULT_CURRENCY.to_owned());
        let currency = Currency::parse(&currency)?;
        for m in &summary.metrics {
            let quantity = m.state.overage_quantity().max(Decimal::ZERO);
            let price = m
                .state
                .rule
                .overage_unit_price
                .map(Amount::to_decimal)
                .unwrap_or(Decimal::ZERO);
            let amount = currency.display(quantity * price);
            out.push(Owed {
                org: OrganizationId(summary.org.id),
                metric: m.metric.clone(),
                quantity: Amount::parse("quantity", quantity)?.scaled(),
                unit_price: Amount::parse("unitPrice", price)?.scaled(),
                amount: Amount::parse("amount", amount)?.scaled(),
                currency: currency.as_str().to_owned(),
            });
        }
    }
    Ok(out)
}

/// A charge's history with one more line.
pub(crate) fn with_note(history: &str, note: String) -> String {
    let mut lines: Vec<String> = serde_json::from_str(history).unwrap_or_default();
    lines.push(format!(
        "{}: {note}",
        Utc::now().format("%Y-%m-%d %H:%M UTC")
    ));
    serde_json::to_string(&lines).unwrap_or_else(|_| "[]".into())
}

/// Brings a stored charge in line with what is owed now: a charge not yet sent takes the corrected
/// quantity (VOID when nothing is left); a SENT one is left alone, and its history says so.
/// Answers the charge as it now stands (None when it should not be sent).
async fn reconcile<C: sea_orm::ConnectionTrait>(
    db: &C,
    charge: &overage_charge::Model,
    owed: Option<&Owed>,
) -> AppResult<Option<(i64, i64)>> {
    let (quantity, amount) = owed.map_or((0, 0), |o| (o.quantity, o.amount));
    if (quantity, amount) == (charge.quantity, charge.amount) {
        return Ok((charge.status == "PENDING").then_some((quantity, amount)));
    }
    let units = Amount::from_scaled(quantity).to_decimal().normalize();
    match charge.status.as_str() {
        "PENDING" | "FAILED" => {
            let note = if amount > 0 {
                format!("corrected before it was sent: {units} units")
            } else {
                "corrected before it was sent: nothing is owed any more (VOID)".to_owned()
            };
            store::overage::correct(
                db,
                charge.id,
                quantity,
                amount,
                &with_note(&charge.history, note),
            )
            .await?;
            Ok((charge.status == "PENDING" && amount > 0).then_some((quantity, amount)))
        }
        "SENT" => {
            let note = format!(
                "the period was corrected after this was sent (now {units} units); left alone"
            );
            if !charge.history.contains("after this was sent (now")
                || !charge.history.contains(&format!("now {units} units"))
            {
                store::overage::note(db, charge.id, &with_note(&charge.history, note)).await?;
            }
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// billOverage: the period's charges (default: the last closed period), created once; charges
/// already there are brought in line with the period's counters (see `reconcile`).
pub async fn bill(
    engine: &Engine,
    viewer: &Viewer,
    period: Option<NaiveDate>,
) -> AppResult<Vec<overage_charge::Model>> {
    access::require_platform(viewer)?;
    let current = Period::current();
    let period = match period {
        Some(d) => Period::containing(d),
        None => current.previous(),
    };
    if period >= current {
        return Err(AppError::bad_input(
            "only a closed period is billed: this one has not ended",
        ));
    }
    use sea_orm::Iterable;
    let every: Vec<_> = entity::enums::OrganizationStatus::iter().collect();
    let ids = store::orgs::ids_with_status(&engine.db, Scope::Platform, &every).await?;
    let mut all = Vec::new();
    for chunk in ids.chunks(200) {
        let orgs = store::orgs::by_ids(&engine.db, Scope::Platform, chunk).await?;
        all.extend(owed(engine, orgs, period).await?);
    }
    engine.db.release().await;
    let txn = engine.db.begin_write().await?;
    let existing = store::overage::for_period(&*txn, Scope::Platform, period.start).await?;
    for charge in &existing {
        let o = all
            .iter()
            .find(|o| o.org.0 == charge.organization_id && o.metric == charge.metric_code);
        reconcile(&*txn, charge, o).await?;
    }
    for o in all.iter().filter(|o| o.amount > 0) {
        if existing
            .iter()
            .any(|c| c.organization_id == o.org.0 && c.metric_code == o.metric)
        {
            continue;
        }
        let units = Amount::from_scaled(o.quantity).to_decimal().normalize();
        let row = o.charge(period.start, format!("billed: {units} units"));
        store::overage::insert_once(&*txn, Scope::Platform, row).await?;
    }
    let charges = store::overage::for_period(&*txn, Scope::Platform, period.start).await?;
    txn.commit().await?;
    Ok(charges)
}

/// One round of the outbox: claims what is due and sends it. Answers how many were handled.
pub async fn send_pending(engine: &Engine, sender: uuid::Uuid) -> AppResult<usize> {
    let now = Utc::now();
    let until = now + Duration::from_std(CLAIM).unwrap_or(Duration::seconds(60));
    let txn = engine.db.begin_write().await?;
    let claimed = store::overage::claim(&*txn, sender, now, until, 20).await?;
    txn.commit().await?;
    let n = claimed.len();
    for charge in claimed {
        send_one(engine, charge).await?;
    }
    Ok(n)
}

/// Where a charge is billed: the organization's own Stripe customer (the platform bills it), or,
/// for a membership's overage, the customer of the membership's Stripe subscription on the
/// organization's connected account (the organization bills its customer).
async fn billed_to(
    engine: &Engine,
    charge: &overage_charge::Model,
) -> AppResult<Result<(String, Option<String>, Option<String>), Refusal>> {
    let org = OrganizationId(charge.organization_id);
    let Some(membership) = charge.membership_id else {
        let found = store::orgs::find(&engine.db, Scope::Platform, org).await?;
        return Ok(found
            .and_then(|o| o.stripe_customer_id)
            .map(|c| (c, None, None))
            .ok_or_else(|| Refusal::Final("the organization has no Stripe customer".to_owned())));
    };
    let found = store::memberships::memberships_by_ids(&engine.db, Scope::Platform, &[membership])
        .await?
        .into_iter()
        .next();
    let Some(subscription) = found.and_then(|m| m.stripe_subscription_id) else {
        return Ok(Err(Refusal::Final(
            "the membership has no Stripe subscription".to_owned(),
        )));
    };
    let account = store::connect::by_org(&engine.db, Scope::Platform, org)
        .await?
        .map(|a| a.stripe_account_id);
    let path = format!("/v1/subscriptions/{}", urlencoding_segment(&subscription));
    Ok(match engine.stripe.get(&path, account.as_deref()).await {
        Ok(sub) => {
            let customer = sub
                .get("customer")
                .and_then(|c| c.as_str().or_else(|| c.get("id").and_then(|i| i.as_str())))
                .map(str::to_owned);
            match customer {
                Some(c) => Ok((c, account, Some(subscription))),
                None => Err(Refusal::Final(
                    "Stripe named no customer for the membership's subscription".to_owned(),
                )),
            }
        }
        Err(AppError::BadInput(m)) => Err(Refusal::Final(m)),
        Err(AppError::Internal(e)) => Err(Refusal::Retry(format!("{e:#}"))),
        Err(other) => Err(Refusal::Final(other.client_message())),
    })
}

/// A path segment as Stripe ids are written (letters, digits, `_`); anything else is escaped.
fn urlencoding_segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn send_one(engine: &Engine, charge: overage_charge::Model) -> AppResult<()> {
    let target = billed_to(engine, &charge).await?;
    let result = match target {
        Err(refusal) => Err(refusal),
        Ok((customer, account, subscription)) => {
            let currency = Currency::parse(&charge.currency)?;
            let minor = Amount::from_scaled(charge.amount).to_decimal()
                * Decimal::from(10_i64.pow(currency.minor_units()));
            let mut form = vec![
                ("customer", customer.clone()),
                ("amount", minor.trunc().to_string()),
                ("currency", charge.currency.clone()),
                (
                    "description",
                    format!(
                        "{} {} over the allowance, {}",
                        Amount::from_scaled(charge.quantity)
                            .to_decimal()
                            .normalize(),
                        charge.metric_code,
                        charge.period_start.format("%Y-%m")
                    ),
                ),
                ("metadata[tollgate_charge_id]", charge.id.to_string()),
                (
                    "metadata[organization_id]",
                    charge.organization_id.to_string(),
                ),
                (
                    "metadata[period]",
                    charge.period_start.format("%Y-%m").to_string(),
                ),
                ("metadata[metric]", charge.metric_code.clone()),
            ];
            if let Some(sub) = subscription {
                // On the membership's subscription's next invoice.
                form.push(("subscription", sub));
            }
            if let Some(m) = charge.membership_id {
                form.push(("metadata[membership_id]", m.to_string()));
            }
            if let Some(b) = charge.booking_id {
                form.push(("metadata[booking_id]", b.to_string()));
            }
            match engine
                .stripe
                .post(
                    "/v1/invoiceitems",
                    &form,
                    Some(&idempotency_key(charge.id)),
                    account.as_deref(),
                )
                .await
            {
                Ok(item) => item
                    .get("id")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| Refusal::Retry("Stripe answered no id".to_owned())),
                Err(AppError::BadInput(m)) => Err(Refusal::Final(m)),
                Err(AppError::Internal(e)) => Err(Refusal::Retry(format!("{e:#}"))),
                Err(other) => Err(Refusal::Final(other.client_message())),
            }
        }
    };
    let txn = engine.db.begin_write().await?;
    match result {
        Ok(id) => {
            let at = Utc::now();
            store::overage::mark_sent(&*txn, charge.id, &id, at, Period::of_instant(at).start)
                .await?;
        }
        Err(Refusal::Final(m)) => {
            tracing::warn!(charge = %charge.id, error = %m, "overage charge refused");
            store::overage::mark_failed(&*txn, charge.id, &m).await?;
        }
        Err(Refusal::Retry(m)) => {
            let wait = 2_i64
                .saturating_pow(charge.attempts.clamp(0, 10) as u32)
                .min(600);
            tracing::warn!(charge = %charge.id, error = %m, retry_in_s = wait, "overage charge not sent");
            store::overage::retry_later(&*txn, charge.id, &m, Utc::now() + Duration::seconds(wait))
                .await?;
        }
    }
    txn.commit().await?;
    Ok(())
}

enum Refusal {
    /// Retrying cannot fix it.
    Final(String),
    /// The network or Stripe failed: later.
    Retry(String),
}

/// One row of platform_revenue_summary.
pub struct PlatformRevenue {
    pub period: Period,
    pub currency: Currency,
    pub payments: i64,
    pub organizations: i64,
    pub gross: Decimal,
    pub fees: Decimal,
    pub overage_billed: Decimal,
}

/// platformRevenue: per period (default: the last 12) and currency, oldest first, from stored rows.
pub async fn platform_revenue(
    engine: &Engine,
    viewer: &Viewer,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> AppResult<Vec<PlatformRevenue>> {
    access::require_platform(viewer)?;
    let periods = Period::history("platformRevenue", from, to)?;
    let (from, to) = (periods[0], periods[periods.len() - 1]);
    let payments = store::payments::platform_revenue(&engine.db, from.start, to.start).await?;
    let overage = store::overage::sent_per_period(&engine.db, from.start, to.start).await?;
    let dec = |v: i64| Amount::from_scaled(v).to_decimal();
    let mut keys: Vec<(NaiveDate, String)> = payments
        .iter()
        .map(|p| (p.0, p.1.clone()))
        .chain(overage.iter().map(|o| (o.0, o.1.clone())))
        .collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for (period, currency) in keys {
        let c = Currency::parse(&currency)?;
        let p = payments.iter().find(|p| p.0 == period && p.1 == currency);
        let billed = overage
            .iter()
            .filter(|o| o.0 == period && o.1 == currency)
            .map(|o| o.2)
            .sum::<i64>();
        out.push(PlatformRevenue {
            period: Period::containing(period),
            payments: p.map_or(0, |p| p.2),
            organizations: p.map_or(0, |p| p.3),
            gross: c.display(dec(p.map_or(0, |p| p.4))),
            fees: c.display(dec(p.map_or(0, |p| p.5))),
            overage_billed: c.display(dec(billed)),
            currency: c,
        });
    }
    Ok(out)
}

//! Money an organization receives: the platform's application fee on each payment (the seed's
//! calculate_application_fee()), payments recorded once per Stripe PaymentIntent with their fee and
//! net (track_platform_revenue()), the `revenue` metric moved in the same transaction, and revenue
//! per period and currency (organization_revenue_summary), from stored rows only.

use chrono::{DateTime, NaiveDate, Utc};
use entity::payment;
use rust_decimal::{Decimal, RoundingStrategy};

use super::access::{self, Action};
use super::usage::{Engine, Fact};
use super::{Amount, OrganizationId, Period, Viewer, optional_text, required_text};
use crate::error::{AppError, AppResult};
use crate::store;

/// The currency assumed where a caller names none.
pub const DEFAULT_CURRENCY: &str = "usd";

/// Stripe's zero-decimal currencies: amounts are whole units.
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
    "xaf", "xof", "xpf",
];
/// Stripe's three-decimal currencies.
const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

/// An ISO 4217 code in lowercase, as Stripe writes them ("usd").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Currency(String);

impl Currency {
    pub fn parse(s: &str) -> AppResult<Self> {
        let c = s.trim().to_ascii_lowercase();
        if c.len() == 3 && c.bytes().all(|b| b.is_ascii_lowercase()) {
            Ok(Currency(c))
        } else {
            Err(AppError::bad_input(format!(
                "invalid currency {}: use an ISO 4217 code such as usd",
                crate::error::quote(s)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Decimal places of the currency's minor unit (JPY: 0, USD: 2, KWD: 3).
    pub fn minor_units(&self) -> u32 {
        if ZERO_DECIMAL.contains(&self.0.as_str()) {
            0
        } else if THREE_DECIMAL.contains(&self.0.as_str()) {
            3
        } else {
            2
        }
    }

    /// An amount written with exactly the currency's places ("4.20", "75").
    pub fn display(&self, amount: Decimal) -> Decimal {
        let mut d = amount
            .round_dp_with_strategy(self.minor_units(), RoundingStrategy::MidpointAwayFromZero);
        d.rescale(self.minor_units());
        d
    }
}

/// What the platform keeps of a payment, and what the organization nets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeeQuote {
    pub amount: Decimal,
    pub currency: Currency,
    pub application_fee_pct: Decimal,
    pub application_fee: Decimal,
    pub net_amount: Decimal,
}

/// calculate_application_fee(): `pct` percent of `amount`, rounded half-up to the currency's minor
/// unit, exact (no float anywhere). The amount must be positive and in whole minor units.
pub fn application_fee(amount: Decimal, pct: Decimal, currency: Currency) -> AppResult<FeeQuote> {
    if amount <= Decimal::ZERO {
        return Err(AppError::bad_input("amount must be greater than 0"));
    }
    if amount.normalize().scale() > currency.minor_units() {
        return Err(AppError::bad_input(format!(
            "amount has more decimal places than {} allows ({})",
            currency.as_str(),
            currency.minor_units()
        )));
    }
    Amount::parse("amount", amount)?;
    let fee = amount
        .checked_mul(pct)
        .and_then(|x| x.checked_div(Decimal::ONE_HUNDRED))
        .ok_or_else(|| AppError::bad_input("amount is too large"))?
        .round_dp_with_strategy(
            currency.minor_units(),
            RoundingStrategy::MidpointAwayFromZero,
        );
    Ok(FeeQuote {
        amount,
        application_fee_pct: pct,
        application_fee: fee,
        net_amount: amount - fee,
        currency,
    })
}

/// The application fee percent of an organization's current plan (0 without a plan).
/// Read through the handle the caller already uses (a request never holds two connections).
pub(crate) async fn fee_pct<C: sea_orm::ConnectionTrait>(
    db: &C,
    plan_id: Option<uuid::Uuid>,
) -> AppResult<Decimal> {
    let Some(id) = plan_id else {
        return Ok(Decimal::ZERO);
    };
    let plan = store::catalog::plan_by_id(db, id).await?;
    Ok(plan
        .map(|p| Amount::from_scaled(p.application_fee_pct).to_decimal())
        .unwrap_or(Decimal::ZERO))
}

/// quoteApplicationFee: any reader of the organization.
pub async fn quote(
    engine: &Engine,
    viewer: &Viewer,
    org: Option<&str>,
    amount: Decimal,
    currency: Option<&str>,
) -> AppResult<FeeQuote> {
    let id = access::target_org(viewer, org)?;
    let org = access::authorize(&engine.db, viewer, id, Action::Read).await?;
    let currency = Currency::parse(currency.unwrap_or(DEFAULT_CURRENCY))?;
    application_fee(amount, fee_pct(&engine.db, org.plan_id).await?, currency)
}

/// recordPayment's input.
pub struct PaymentInput {
    pub organization_id: Option<String>,
    pub stripe_payment_intent_id: String,
    pub amount: Decimal,
    pub currency: String,
    pub reference: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
}

/// The metric a payment's amount moves.
pub const REVENUE_METRIC: &str = "revenue";

/// recordPayment (the seed's track_platform_revenue()): SERVICE, OWNER/ADMIN or the platform team.
/// Once per PaymentIntent: the same payment again answers the stored one; the same PaymentIntent
/// with another organization, amount or currency is a CONFLICT. The fee comes from the plan at the
/// time of recording. The `revenue` metric moves in the same transaction (idempotent with the
/// PaymentIntent); a payment is a fact, so it is stored even where a HARD revenue limit refuses
/// the metric's recording.
pub async fn record_payment(
    engine: &Engine,
    viewer: &Viewer,
    input: PaymentInput,
) -> AppResult<payment::Model> {
    let id = access::target_org(viewer, input.organization_id.as_deref())?;
    let org = access::authorize(&engine.db, viewer, id, Action::Record).await?;
    let input = PaymentInput {
        occurred_at: Some(engine.validate_time(input.occurred_at)?),
        ..input
    };
    let txn = engine.db.begin_write().await?;
    match record_payment_in(engine, &txn, viewer, &org, input).await? {
        Recorded::New(stored, alerts) => {
            engine
                .commit_and_publish(txn, OrganizationId(org.id), &alerts)
                .await?;
            Ok(stored)
        }
        Recorded::Existing(stored) => {
            txn.rollback().await?;
            Ok(stored)
        }
    }
}

/// What `record_payment_in` did.
pub enum Recorded {
    /// Stored now, with the revenue metric's alerts (publish them after commit).
    New(payment::Model, Vec<entity::usage_alert::Model>),
    /// Recorded before, the same payment: nothing changed.
    Existing(payment::Model),
}

/// Records a payment of `org` inside the caller's transaction (recordPayment, and a
/// payment_intent.succeeded webhook): once per PaymentIntent, with its fee and the revenue metric.
pub async fn record_payment_in(
    engine: &Engine,
    txn: &crate::store::db::WriteTxn,
    viewer: &Viewer,
    org: &entity::organization::Model,
    input: PaymentInput,
) -> AppResult<Recorded> {
    let intent = required_text(
        "stripePaymentIntentId",
        &input.stripe_payment_intent_id,
        255,
    )?;
    let reference = optional_text("reference", input.reference.as_deref(), 255)?;
    let currency = Currency::parse(&input.currency)?;
    let mut quote = application_fee(input.amount, fee_pct(&**txn, org.plan_id).await?, currency)?;
    // The payment of a booking (its reference): what the booking was priced at, and the platform
    // keeps the booking's fee and the guest surcharge (seed 002's fee structure).
    if let Some(r) = &reference
        && let Some(b) = store::memberships::booking_by_reference(
            &**txn,
            viewer.scope(),
            OrganizationId(org.id),
            r,
            false,
        )
        .await?
    {
        if b.status == "CANCELLED" {
            return Err(AppError::conflict(format!(
                "booking {} was cancelled: it is not paid",
                crate::error::quote(r)
            )));
        }
        if b.coverage == "OVERAGE"
            && let Some(mid) = b.membership_id
            && store::memberships::memberships_by_ids(&**txn, viewer.scope(), &[mid])
                .await?
                .iter()
                .any(|m| m.stripe_subscription_id.is_some())
        {
            return Err(AppError::bad_input(format!(
                "booking {} is overage of a membership billed by its Stripe subscription: it is paid on that subscription's invoice, not at booking",
                crate::error::quote(r)
            )));
        }
        if let Some(paid) =
            store::payments::by_reference(&**txn, viewer.scope(), OrganizationId(org.id), r).await?
            && paid.stripe_payment_intent_id != intent
        {
            return Err(AppError::conflict(format!(
                "booking {} was already paid (payment {})",
                crate::error::quote(r),
                crate::error::quote(&paid.stripe_payment_intent_id)
            )));
        }
        let total = Amount::from_scaled(b.total).to_decimal();
        if total != quote.amount || b.currency != quote.currency.as_str() {
            return Err(AppError::bad_input(format!(
                "booking {} costs {} {}: the payment must be that amount",
                crate::error::quote(r),
                quote.currency.display(total),
                b.currency
            )));
        }
        let kept = Amount::from_scaled(b.platform_fee + b.guest_surcharge).to_decimal();
        quote.application_fee_pct = Amount::from_scaled(b.platform_fee_pct).to_decimal();
        quote.application_fee = kept;
        quote.net_amount = quote.amount - kept;
    }
    let occurred_at = input.occurred_at.unwrap_or_else(Utc::now);
    let scope = viewer.scope();
    let amount = Amount::parse("amount", quote.amount)?.scaled();
    let same = |p: &payment::Model| {
        p.organization_id == org.id && p.amount == amount && p.currency == quote.currency.as_str()
    };
    let conflict = || {
        AppError::conflict(format!(
            "payment {} was already recorded, with other details",
            crate::error::quote(&intent)
        ))
    };
    if let Some(existing) = store::payments::by_intent(&**txn, scope, &intent).await? {
        return if same(&existing) {
            Ok(Recorded::Existing(existing))
        } else {
            Err(conflict())
        };
    }
    let row = payment::Model {
        id: uuid::Uuid::now_v7(),
        organization_id: org.id,
        stripe_payment_intent_id: intent.clone(),
        amount,
        currency: quote.currency.as_str().to_owned(),
        application_fee: Amount::parse("applicationFee", quote.application_fee)?.scaled(),
        application_fee_pct: Amount::parse("applicationFeePct", quote.application_fee_pct)?
            .scaled(),
        net_amount: Amount::parse("netAmount", quote.net_amount)?.scaled(),
        refunded_amount: 0,
        reference,
        occurred_at,
        period_start: Period::of_instant(occurred_at).start,
        created_at: Utc::now(),
        created_by: Some(viewer.sub.clone()),
    };
    let Some(stored) = store::payments::insert_once(&**txn, scope, row).await? else {
        // Another recording of the same PaymentIntent committed first.
        return match store::payments::by_intent(&**txn, scope, &intent).await? {
            Some(p) if same(&p) => Ok(Recorded::Existing(p)),
            _ => Err(conflict()),
        };
    };
    let fact = Fact {
        org: org.clone(),
        metric: REVENUE_METRIC,
        quantity: Amount::from_scaled(stored.amount),
        key: format!("payment:{intent}"),
        reference: format!("payment:{intent}"),
        occurred_at,
    };
    let alerts = match engine.record_fact_in(txn, viewer, fact).await? {
        Some(outcome) => outcome.alerts,
        None => Vec::new(),
    };
    Ok(Recorded::New(stored, alerts))
}

/// A payment's state, from what was refunded of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Succeeded,
    Refunded,
    PartiallyRefunded,
}

pub fn payment_status(p: &payment::Model) -> PaymentStatus {
    if p.refunded_amount <= 0 {
        PaymentStatus::Succeeded
    } else if p.refunded_amount >= p.amount {
        PaymentStatus::Refunded
    } else {
        PaymentStatus::PartiallyRefunded
    }
}

/// One row of organization_revenue_summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevenueSummary {
    pub org: OrganizationId,
    pub period: Period,
    pub currency: Currency,
    pub payments: i64,
    pub gross: Decimal,
    pub refunded: Decimal,
    pub fees: Decimal,
    /// gross - refunded - fees.
    pub net: Decimal,
}

/// Organization.revenue: one row per period from `from` to `to` (default: the last 12 periods) and
/// currency, oldest first; a period without payments or refunds has one row of zeros in the
/// currency of the organization's plan.
pub async fn revenue(
    engine: &Engine,
    viewer: &Viewer,
    org: &entity::organization::Model,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
) -> AppResult<Vec<RevenueSummary>> {
    let periods = Period::history("revenue", from, to)?;
    let (first, last) = (periods[0], periods[periods.len() - 1]);
    let id = OrganizationId(org.id);
    let rows =
        store::payments::revenue(&engine.db, viewer.scope(), id, first.start, last.start).await?;
    let plan_currency = match org.plan_id {
        Some(p) => store::catalog::plan_by_id(&engine.db, p)
            .await?
            .map(|p| p.currency.to_ascii_lowercase()),
        None => None,
    }
    .unwrap_or_else(|| DEFAULT_CURRENCY.to_owned());
    let dec = |v: i64| Amount::from_scaled(v).to_decimal();
    let mut out = Vec::new();
    for period in periods {
        let mut any = false;
        for r in rows.iter().filter(|r| r.period_start == period.start) {
            any = true;
            let currency = Currency::parse(&r.currency)?;
            let (gross, refunded, fees) = (dec(r.gross), dec(r.refunded), dec(r.fees));
            out.push(RevenueSummary {
                org: id,
                period,
                payments: r.payments,
                net: currency.display(gross - refunded - fees),
                gross: currency.display(gross),
                refunded: currency.display(refunded),
                fees: currency.display(fees),
                currency,
            });
        }
        if !any {
            let currency = Currency::parse(&plan_currency)?;
            out.push(RevenueSummary {
                org: id,
                period,
                payments: 0,
                gross: currency.display(Decimal::ZERO),
                refunded: currency.display(Decimal::ZERO),
                fees: currency.display(Decimal::ZERO),
                net: currency.display(Decimal::ZERO),
                currency,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn fee(amount: &str, pct: &str, currency: &str) -> AppResult<(String, String)> {
        let c = Currency::parse(currency)?;
        let q = application_fee(d(amount), d(pct), c.clone())?;
        Ok((
            c.display(q.application_fee).to_string(),
            c.display(q.net_amount).to_string(),
        ))
    }

    #[test]
    fn fees_are_exact_and_half_up_in_minor_units() {
        assert_eq!(
            fee("42.00", "10", "usd").unwrap(),
            ("4.20".into(), "37.80".into())
        );
        assert_eq!(
            fee("0.05", "10", "usd").unwrap(),
            ("0.01".into(), "0.04".into())
        );
        assert_eq!(
            fee("0.04", "10", "usd").unwrap(),
            ("0.00".into(), "0.04".into())
        );
        assert_eq!(
            fee("1000", "7.5", "JPY").unwrap(),
            ("75".into(), "925".into())
        );
        assert_eq!(
            fee("1010", "7.5", "jpy").unwrap(),
            ("76".into(), "934".into())
        );
        assert_eq!(
            fee("1.000", "2.5", "kwd").unwrap(),
            ("0.025".into(), "0.975".into())
        );
        assert_eq!(
            fee("19.99", "0", "eur").unwrap(),
            ("0.00".into(), "19.99".into())
        );
        // Amounts finer than the currency's minor unit, non-positive amounts, odd codes: refused.
        assert!(fee("10.5", "10", "jpy").is_err());
        assert!(fee("0.001", "10", "usd").is_err());
        assert!(fee("0", "10", "usd").is_err());
        assert!(fee("-5", "10", "usd").is_err());
        assert!(fee("5", "10", "us").is_err());
        assert!(fee("5", "10", "u$d").is_err());
    }
}

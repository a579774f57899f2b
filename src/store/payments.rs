//! Payments and their refunds (the money an organization received), scoped like every tenant table.

use chrono::{DateTime, NaiveDate, Utc};
use entity::payment;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::query_all;
use crate::domain::{OrganizationId, Scope};

/// The payment of a PaymentIntent, if the scope may see it.
pub async fn by_intent<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    intent: &str,
) -> Result<Option<payment::Model>, DbErr> {
    let mut q = payment::Entity::find().filter(payment::Column::StripePaymentIntentId.eq(intent));
    if let Scope::Tenant(org) = scope {
        q = q.filter(payment::Column::OrganizationId.eq(org.0));
    }
    q.one(db).await
}

/// Inserts a payment unless its PaymentIntent is already recorded (then None, and the transaction
/// stays usable on Postgres: no unique violation is raised). Its organization must be in scope.
pub async fn insert_once<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    row: payment::Model,
) -> Result<Option<payment::Model>, DbErr> {
    if !scope.allows(OrganizationId(row.organization_id)) {
        return Err(DbErr::RecordNotInserted);
    }
    let active: payment::ActiveModel = row.clone().into();
    let inserted = payment::Entity::insert(active)
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(payment::Column::StripePaymentIntentId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok((inserted == 1).then_some(row))
}

/// A page of an organization's payments, newest first (by when they were made, then by id).
pub async fn page<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: u64,
) -> Result<Vec<payment::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    let mut q = payment::Entity::find().filter(payment::Column::OrganizationId.eq(org.0));
    if let Some((at, id)) = after {
        q = q.filter(
            sea_orm::Condition::any()
                .add(payment::Column::OccurredAt.lt(at))
                .add(
                    sea_orm::Condition::all()
                        .add(payment::Column::OccurredAt.eq(at))
                        .add(payment::Column::Id.lt(id)),
                ),
        );
    }
    q.order_by_desc(payment::Column::OccurredAt)
        .order_by_desc(payment::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

/// One organization's revenue in one period and currency (the seed's organization_revenue_summary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevenueRow {
    pub period_start: NaiveDate,
    pub currency: String,
    pub payments: i64,
    /// Scaled by 10^4, like the columns.
    pub gross: i64,
    pub fees: i64,
    pub refunded: i64,
}

/// Revenue per period and currency for periods `from..=to` (period starts): payments count in the
/// period they were made, refunds in the period they were made.
pub async fn revenue<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<RevenueRow>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    // Payments and refunds grouped apart, then merged: a period may have refunds and no payment.
    let rows = query_all(
        db,
        "SELECT period_start, currency, CAST(COUNT(*) AS BIGINT) AS n, \
                CAST(SUM(amount) AS BIGINT) AS gross, CAST(SUM(application_fee) AS BIGINT) AS fees, \
                CAST(0 AS BIGINT) AS refunded \
         FROM payments WHERE organization_id = $1 AND period_start >= $2 AND period_start <= $3 \
         GROUP BY period_start, currency \
         UNION ALL \
         SELECT r.period_start, p.currency, CAST(0 AS BIGINT) AS n, CAST(0 AS BIGINT) AS gross, \
                CAST(0 AS BIGINT) AS fees, CAST(SUM(r.amount) AS BIGINT) AS refunded \
         FROM payment_refunds r JOIN payments p ON p.id = r.payment_id \
         WHERE r.organization_id = $1 AND r.period_start >= $2 AND r.period_start <= $3 \
         GROUP BY r.period_start, p.currency",
        vec![org.0.into(), from.into(), to.into()],
    )
    .await?;
    let mut out: Vec<RevenueRow> = Vec::new();
    for r in rows {
        let period_start: NaiveDate = r.try_get("", "period_start")?;
        let currency: String = r.try_get("", "currency")?;
        let n: i64 = r.try_get("", "n")?;
        let gross: i64 = r.try_get("", "gross")?;
        let fees: i64 = r.try_get("", "fees")?;
        let refunded: i64 = r.try_get("", "refunded")?;
        match out
            .iter_mut()
            .find(|o| o.period_start == period_start && o.currency == currency)
        {
            Some(o) => {
                o.payments += n;
                o.gross += gross;
                o.fees += fees;
                o.refunded += refunded;
            }
            None => out.push(RevenueRow {
                period_start,
                currency,
                payments: n,
                gross,
                fees,
                refunded,
            }),
        }
    }
    out.sort_by(|a, b| (a.period_start, &a.currency).cmp(&(b.period_start, &b.currency)));
    Ok(out)
}

/// Records a refund of a payment once (by Stripe's refund id): false when it was already recorded.
pub async fn insert_refund<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    row: entity::payment_refund::Model,
) -> Result<bool, DbErr> {
    if !scope.allows(OrganizationId(row.organization_id)) {
        return Ok(false);
    }
    let active: entity::payment_refund::ActiveModel = row.into();
    let n = entity::payment_refund::Entity::insert(active)
        .on_conflict(
            sea_orm::sea_query::OnConflict::column(entity::payment_refund::Column::StripeRefundId)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(n == 1)
}

/// The sum of a payment's recorded refunds.
pub async fn refunded_total<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    payment: &payment::Model,
) -> Result<i64, DbErr> {
    if !scope.allows(OrganizationId(payment.organization_id)) {
        return Ok(0);
    }
    let row = super::query_one(
        db,
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) AS total FROM payment_refunds WHERE payment_id = $1",
        vec![payment.id.into()],
    )
    .await?;
    match row {
        Some(r) => r.try_get("", "total"),
        None => Ok(0),
    }
}

/// Sets how much of a payment was refunded (its refunds' sum, never more than it paid).
pub async fn set_refunded<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    payment: &payment::Model,
) -> Result<i64, DbErr> {
    if !scope.allows(OrganizationId(payment.organization_id)) {
        return Ok(0);
    }
    let refunded = refunded_total(db, scope, payment)
        .await?
        .min(payment.amount);
    super::execute(
        db,
        "UPDATE payments SET refunded_amount = $1 WHERE id = $2",
        vec![refunded.into(), payment.id.into()],
    )
    .await?;
    Ok(refunded)
}

/// The platform's revenue per period and currency over every organization (the seed's
/// platform_revenue_summary): (period, currency, payments, organizations, gross, fees).
pub async fn platform_revenue<C: ConnectionTrait>(
    db: &C,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<(NaiveDate, String, i64, i64, i64, i64)>, DbErr> {
    let rows = query_all(
        db,
        "SELECT period_start, currency, CAST(COUNT(*) AS BIGINT) AS n, \
                CAST(COUNT(DISTINCT organization_id) AS BIGINT) AS orgs, \
                CAST(SUM(amount) AS BIGINT) AS gross, CAST(SUM(application_fee) AS BIGINT) AS fees \
         FROM payments WHERE period_start >= $1 AND period_start <= $2 GROUP BY period_start, currency",
        vec![from.into(), to.into()],
    )
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok((
                r.try_get("", "period_start")?,
                r.try_get("", "currency")?,
                r.try_get("", "n")?,
                r.try_get("", "orgs")?,
                r.try_get("", "gross")?,
                r.try_get("", "fees")?,
            ))
        })
        .collect()
}

/// A payment of an organization carrying `reference` (the first, if several).
pub async fn by_reference<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    reference: &str,
) -> Result<Option<payment::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    payment::Entity::find()
        .filter(payment::Column::OrganizationId.eq(org.0))
        .filter(payment::Column::Reference.eq(reference))
        .order_by_asc(payment::Column::Id)
        .one(db)
        .await
}

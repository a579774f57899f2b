//! Overage charges and their outbox (see the migration m20261129_000009).

use chrono::{DateTime, NaiveDate, Utc};
use entity::overage_charge;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use super::{execute, query_all};
use crate::domain::{OrganizationId, Scope};

/// Inserts a charge unless it exists: an organization's, once per period and metric; a
/// membership's (with a booking), once per booking. Each has its own partial unique index.
pub async fn insert_once<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    row: overage_charge::Model,
) -> Result<bool, DbErr> {
    use overage_charge::Column as C;
    use sea_orm::sea_query::{Expr, ExprTrait};
    if !scope.allows(OrganizationId(row.organization_id)) {
        return Ok(false);
    }
    let booking = Expr::col(C::BookingId);
    let target = if row.booking_id.is_some() {
        OnConflict::columns([C::OrganizationId, C::BookingId])
            .target_and_where(booking.is_not_null())
            .do_nothing()
            .to_owned()
    } else {
        OnConflict::columns([C::OrganizationId, C::PeriodStart, C::MetricCode])
            .target_and_where(booking.is_null())
            .do_nothing()
            .to_owned()
    };
    let active: overage_charge::ActiveModel = row.into();
    let n = overage_charge::Entity::insert(active)
        .on_conflict(target)
        .exec_without_returning(db)
        .await?;
    Ok(n == 1)
}

/// Every charge of a period the scope may see.
pub async fn for_period<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    period: NaiveDate,
) -> Result<Vec<overage_charge::Model>, DbErr> {
    let mut q = overage_charge::Entity::find()
        .filter(overage_charge::Column::PeriodStart.eq(period))
        .filter(overage_charge::Column::BookingId.is_null());
    if let Scope::Tenant(org) = scope {
        q = q.filter(overage_charge::Column::OrganizationId.eq(org.0));
    }
    q.order_by_asc(overage_charge::Column::OrganizationId)
        .order_by_asc(overage_charge::Column::MetricCode)
        .all(db)
        .await
}

/// A page of an organization's charges, newest period first.
pub async fn page<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    status: Option<&str>,
    after: Option<(NaiveDate, Uuid)>,
    limit: u64,
) -> Result<Vec<overage_charge::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    let mut q = overage_charge::Entity::find()
        .filter(overage_charge::Column::OrganizationId.eq(org.0))
        .filter(overage_charge::Column::BookingId.is_null());
    if let Some(s) = status {
        q = q.filter(overage_charge::Column::Status.eq(s));
    }
    if let Some((p, id)) = after {
        q = q.filter(
            sea_orm::Condition::any()
                .add(overage_charge::Column::PeriodStart.lt(p))
                .add(
                    sea_orm::Condition::all()
                        .add(overage_charge::Column::PeriodStart.eq(p))
                        .add(overage_charge::Column::Id.lt(id)),
                ),
        );
    }
    q.order_by_desc(overage_charge::Column::PeriodStart)
        .order_by_desc(overage_charge::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

/// Claims up to `limit` PENDING charges due now for `me` until `until`: one statement, whose
/// condition is checked again on each row it locks, so two senders (replicas) never claim one
/// charge; a claim whose sender died expires.
pub async fn claim<C: ConnectionTrait>(
    db: &C,
    me: Uuid,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<overage_charge::Model>, DbErr> {
    let due = "status = 'PENDING' AND next_attempt_at <= $2 AND (claimed_until IS NULL OR claimed_until < $2)";
    execute(
        db,
        &format!(
            "UPDATE overage_charges SET claimed_by = $1, claimed_until = $3 \
             WHERE {due} AND id IN (SELECT id FROM overage_charges WHERE {due} ORDER BY created_at LIMIT {limit})"
        ),
        vec![me.into(), now.into(), until.into()],
    )
    .await?;
    overage_charge::Entity::find()
        .filter(overage_charge::Column::ClaimedBy.eq(me))
        .filter(overage_charge::Column::Status.eq("PENDING"))
        .all(db)
        .await
}

/// Stripe accepted the charge.
pub async fn mark_sent<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    stripe_id: &str,
    at: DateTime<Utc>,
    period: NaiveDate,
) -> Result<(), DbErr> {
    execute(
        db,
        "UPDATE overage_charges SET status = 'SENT', stripe_id = $1, sent_at = $2, sent_period = $3, \
         attempts = attempts + 1, last_error = NULL, claimed_by = NULL, claimed_until = NULL, updated_at = $2 \
         WHERE id = $4 AND status = 'PENDING'",
        vec![stripe_id.into(), at.into(), period.into(), id.into()],
    )
    .await
    .map(|_| ())
}

/// Stripe refused the charge (or it cannot be sent): a person must look.
pub async fn mark_failed<C: ConnectionTrait>(db: &C, id: Uuid, error: &str) -> Result<(), DbErr> {
    execute(
        db,
        "UPDATE overage_charges SET status = 'FAILED', last_error = $1, attempts = attempts + 1, \
         claimed_by = NULL, claimed_until = NULL, updated_at = $2 WHERE id = $3 AND status = 'PENDING'",
        vec![error.into(), Utc::now().into(), id.into()],
    )
    .await
    .map(|_| ())
}

/// Stripe could not be reached or failed: try again at `next`.
pub async fn retry_later<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    error: &str,
    next: DateTime<Utc>,
) -> Result<(), DbErr> {
    execute(
        db,
        "UPDATE overage_charges SET last_error = $1, attempts = attempts + 1, next_attempt_at = $2, \
         claimed_by = NULL, claimed_until = NULL, updated_at = $3 WHERE id = $4 AND status = 'PENDING'",
        vec![error.into(), next.into(), Utc::now().into(), id.into()],
    )
    .await
    .map(|_| ())
}

/// Overage Stripe accepted, per period (accepted in) and currency, from `from` to `to`.
pub async fn sent_per_period<C: ConnectionTrait>(
    db: &C,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<(NaiveDate, String, i64)>, DbErr> {
    let rows = query_all(
        db,
        "SELECT sent_period, currency, CAST(SUM(amount) AS BIGINT) AS total FROM overage_charges \
         WHERE status = 'SENT' AND booking_id IS NULL AND sent_period >= $1 AND sent_period <= $2 GROUP BY sent_period, currency",
        vec![from.into(), to.into()],
    )
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok((
                r.try_get("", "sent_period")?,
                r.try_get("", "currency")?,
                r.try_get("", "total")?,
            ))
        })
        .collect()
}

/// The charge of an organization, period and metric, if any.
pub async fn find<C: ConnectionTrait>(
    db: &C,
    org: OrganizationId,
    period: NaiveDate,
    metric: &str,
) -> Result<Option<overage_charge::Model>, DbErr> {
    overage_charge::Entity::find()
        .filter(overage_charge::Column::OrganizationId.eq(org.0))
        .filter(overage_charge::Column::PeriodStart.eq(period))
        .filter(overage_charge::Column::MetricCode.eq(metric))
        .filter(overage_charge::Column::BookingId.is_null())
        .one(db)
        .await
}

/// A charge not yet sent takes a corrected quantity and amount (VOID when nothing is left).
pub async fn correct<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
    quantity: i64,
    amount: i64,
    history: &str,
) -> Result<(), DbErr> {
    execute(
        db,
        "UPDATE overage_charges SET quantity = $1, amount = $2, history = $3, \
         status = CASE WHEN $2 > 0 THEN status ELSE 'VOID' END, updated_at = $4 \
         WHERE id = $5 AND status IN ('PENDING', 'FAILED')",
        vec![
            quantity.into(),
            amount.into(),
            history.into(),
            Utc::now().into(),
            id.into(),
        ],
    )
    .await
    .map(|_| ())
}

/// Appends to a charge's history (a correction after it was sent, which leaves it alone).
pub async fn note<C: ConnectionTrait>(db: &C, id: Uuid, history: &str) -> Result<(), DbErr> {
    execute(
        db,
        "UPDATE overage_charges SET history = $1, updated_at = $2 WHERE id = $3",
        vec![history.into(), Utc::now().into(), id.into()],
    )
    .await
    .map(|_| ())
}

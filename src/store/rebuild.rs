//! Reads and writes for `recompute`: the ledger summed per period and metric, the counters as stored,
//! and the repair of a counter. Every function takes the caller's scope (the CLI and the daily task
//! run as the platform).

use chrono::{NaiveDate, Utc};
use entity::{usage_counter, usage_event};
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder};

use super::{execute, query_all, stmt};
use crate::domain::{OrganizationId, Period, Scope};

/// A COUNTER's ledger in one period: `used` sums every kind but CREDIT, `credits` sums CREDIT.
#[derive(Debug, Clone)]
pub struct LedgerSum {
    pub period_start: NaiveDate,
    pub metric_code: String,
    pub used: i64,
    pub credits: i64,
}

/// The last period start to read. Dates are text on SQLite, so the open end is a plain 9999-12-01
/// (chrono's MAX prints with a sign and would compare below every real date).
fn until_value(until: Option<NaiveDate>) -> NaiveDate {
    until.unwrap_or_else(|| NaiveDate::from_ymd_opt(9999, 12, 1).unwrap_or_default())
}

/// Every period of one organization that has a counter or a ledger event, up to `until`, ascending.
pub async fn periods_of<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    until: Option<NaiveDate>,
) -> Result<Vec<Period>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    let rows = query_all(
        db,
        "SELECT period_start FROM usage_counters WHERE organization_id = $1 AND period_start <= $2 \
         UNION SELECT DISTINCT period_start FROM usage_events WHERE organization_id = $1 AND period_start <= $2 \
           AND membership_id IS NULL \
         ORDER BY period_start",
        vec![org.0.into(), until_value(until).into()],
    )
    .await?;
    rows.iter()
        .map(|r| {
            r.try_get::<NaiveDate>("", "period_start")
                .map(Period::containing)
        })
        .collect()
}

/// The stored counters of one organization up to `until`.
pub async fn counter_rows<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    until: Option<NaiveDate>,
) -> Result<Vec<usage_counter::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    usage_counter::Entity::find()
        .filter(usage_counter::Column::OrganizationId.eq(org.0))
        .filter(usage_counter::Column::PeriodStart.lte(until_value(until)))
        .order_by_asc(usage_counter::Column::PeriodStart)
        .all(db)
        .await
}

/// The ledger of the COUNTER metrics of one organization, summed in SQL per period and metric.
pub async fn counter_sums<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    until: Option<NaiveDate>,
) -> Result<Vec<LedgerSum>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    // SUM over BIGINT is NUMERIC on Postgres: cast back so both engines answer an i64.
    let rows = query_all(
        db,
        "SELECT e.period_start, e.metric_code, \
           CAST(COALESCE(SUM(CASE WHEN e.kind <> 'CREDIT' THEN e.quantity ELSE 0 END), 0) AS BIGINT) AS used, \
           CAST(COALESCE(SUM(CASE WHEN e.kind = 'CREDIT' THEN e.quantity ELSE 0 END), 0) AS BIGINT) AS credits \
         FROM usage_events e JOIN metrics m ON m.code = e.metric_code \
         WHERE e.organization_id = $1 AND e.period_start <= $2 AND m.kind = 'COUNTER' AND e.membership_id IS NULL \
         GROUP BY e.period_start, e.metric_code",
        vec![org.0.into(), until_value(until).into()],
    )
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LedgerSum {
                period_start: r.try_get("", "period_start")?,
                metric_code: r.try_get("", "metric_code")?,
                used: r.try_get("", "used")?,
                credits: r.try_get("", "credits")?,
            })
        })
        .collect()
}

/// The ledger events of the GAUGE metrics of one organization, in the order they were recorded.
pub async fn gauge_events<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    until: Option<NaiveDate>,
) -> Result<Vec<usage_event::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    usage_event::Entity::find()
        .from_raw_sql(stmt(
            db.get_database_backend(),
            "SELECT e.* FROM usage_events e JOIN metrics m ON m.code = e.metric_code \
             WHERE e.organization_id = $1 AND e.period_start <= $2 AND m.kind = 'GAUGE' \
             AND e.membership_id IS NULL ORDER BY e.id",
            vec![org.0.into(), until_value(until).into()],
        ))
        .all(db)
        .await
}

/// Writes a counter's value (creating the row if it is missing): the repair step of recompute.
pub async fn set_counter<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    period: Period,
    metric: &str,
    used: i64,
    credits: i64,
) -> Result<(), DbErr> {
    if !scope.allows(org) {
        return Ok(());
    }
    execute(
        db,
        "INSERT INTO usage_counters (organization_id, period_start, metric_code, used, credits, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (organization_id, period_start, metric_code) \
         DO UPDATE SET used = excluded.used, credits = excluded.credits, updated_at = excluded.updated_at",
        vec![
            org.0.into(),
            period.start.into(),
            metric.into(),
            used.into(),
            credits.into(),
            Utc::now().into(),
        ],
    )
    .await
    .map(|_| ())
}

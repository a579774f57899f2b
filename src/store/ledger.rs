//! Tenant usage data: the ledger (usage_events), the counters, the period rows (organization_usage),
//! alerts and subscription history. Every function takes the caller's scope.
//!
//! Ids of ledger events, alerts and history rows are UUIDv7: time-ordered, so "newest first" pages are
//! keyset scans on the primary key.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use entity::enums::{MetricKind, UsageEventKind};
use entity::{organization_usage, subscription_history, usage_alert, usage_counter, usage_event};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, Value, sea_query::OnConflict,
};
use uuid::Uuid;

use super::{execute, placeholders, query_all, query_one, scoped_ids, stmt};
use crate::domain::{OrganizationId, Period, Scope};

/// Counters of `orgs` in `period`. A GAUGE without a row in the period carries the latest earlier
/// reading; such a carried row keeps its own `period_start` so callers can tell (its credits belonged
/// to its own period).
pub async fn counters<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    orgs: &[OrganizationId],
    period: Period,
) -> Result<Vec<usage_counter::Model>, DbErr> {
    let orgs = scoped_ids(scope, orgs);
    if orgs.is_empty() {
        return Ok(vec![]);
    }
    let sql = format!(
        "SELECT c.organization_id, c.period_start, c.metric_code, c.used, c.credits, c.updated_at \
         FROM usage_counters c JOIN metrics m ON m.code = c.metric_code \
         WHERE c.organization_id IN ({}) AND {}",
        placeholders(2, orgs.len()),
        in_period("$1")
    );
    let mut values: Vec<Value> = vec![period.start.into()];
    values.extend(orgs.iter().map(|o| Value::from(o.0)));
    usage_counter::Entity::find()
        .from_raw_sql(stmt(db.get_database_backend(), &sql, values))
        .all(db)
        .await
}

/// Which counter rows (`c`, joined to its metric `m`) count in the period given by parameter `period`:
/// the period's own, and for a GAUGE without one, its latest earlier reading.
fn in_period(period: &str) -> String {
    format!(
        "(c.period_start = {period} OR (m.kind = 'GAUGE' AND c.period_start = \
           (SELECT MAX(c2.period_start) FROM usage_counters c2 \
            WHERE c2.organization_id = c.organization_id AND c2.metric_code = c.metric_code \
              AND c2.period_start <= {period})))"
    )
}

/// Everything one organization's summary is built from, as `counters`, `period_rows` and the plan's
/// limits would read it: the organization (in scope), its counters in `period`, when its period row
/// last changed, and its plan's limits.
#[derive(Debug, Clone)]
pub struct UsageState {
    pub org: entity::organization::Model,
    pub counters: Vec<usage_counter::Model>,
    pub row_updated_at: Option<DateTime<Utc>>,
    pub limits: Vec<entity::plan_limit::Model>,
}

/// Organizations' `UsageState`s in one statement (subscriptions' rounds read them after each change,
/// those queued together at once: `domain::usage::rounds`). The organizations missing or out of
/// scope are absent from the answer.
pub async fn usage_states<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    orgs: &[OrganizationId],
    period: Period,
) -> Result<HashMap<OrganizationId, UsageState>, DbErr> {
    let orgs = scoped_ids(scope, orgs);
    if orgs.is_empty() {
        return Ok(HashMap::new());
    }
    // Three kinds of rows under each organization's: its counters (the same rule as `counters`),
    // its period row, its plan's limits.
    let list = placeholders(2, orgs.len());
    let sql = format!(
        "SELECT o.*, t.t_kind, t.t_metric, t.t_period, t.t_used, t.t_credits, t.t_updated, \
                 t.t_included, t.t_enforcement, t.t_price \
               FROM organizations o LEFT JOIN ( \
                 SELECT 'c' AS t_kind, c.organization_id AS t_org, c.metric_code AS t_metric, \
                   c.period_start AS t_period, c.used AS t_used, c.credits AS t_credits, \
                   c.updated_at AS t_updated, CAST(NULL AS BIGINT) AS t_included, \
                   CAST(NULL AS TEXT) AS t_enforcement, CAST(NULL AS BIGINT) AS t_price \
                 FROM usage_counters c JOIN metrics m ON m.code = c.metric_code \
                 WHERE c.organization_id IN ({list}) AND {} \
                 UNION ALL \
                 SELECT 'u', u.organization_id, NULL, NULL, NULL, NULL, u.updated_at, NULL, NULL, NULL \
                 FROM organization_usage u WHERE u.organization_id IN ({list}) AND u.period_start = $1 \
                 UNION ALL \
                 SELECT 'l', p.id, l.metric_code, NULL, NULL, NULL, NULL, l.included, l.enforcement, \
                   l.overage_unit_price \
                 FROM organizations p JOIN plan_limits l ON l.plan_id = p.plan_id WHERE p.id IN ({list}) \
               ) t ON t.t_org = o.id \
               WHERE o.id IN ({list})",
        in_period("$1")
    );
    let mut values: Vec<Value> = vec![period.start.into()];
    values.extend(orgs.iter().map(|o| Value::from(o.0)));
    let rows = query_all(db, &sql, values).await?;
    let mut states: HashMap<OrganizationId, UsageState> = HashMap::with_capacity(orgs.len());
    for row in &rows {
        let id = OrganizationId(row.try_get("", "id")?);
        let state = match states.entry(id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(UsageState {
                org: entity::organization::Model::from_query_result(row, "")?,
                counters: Vec::new(),
                row_updated_at: None,
                limits: Vec::new(),
            }),
        };
        match row.try_get::<Option<String>>("", "t_kind")?.as_deref() {
            Some("c") => state.counters.push(usage_counter::Model {
                organization_id: id.0,
                period_start: row.try_get("", "t_period")?,
                metric_code: row.try_get("", "t_metric")?,
                used: row.try_get("", "t_used")?,
                credits: row.try_get("", "t_credits")?,
                updated_at: row.try_get("", "t_updated")?,
            }),
            Some("u") => state.row_updated_at = Some(row.try_get("", "t_updated")?),
            Some("l") => state.limits.push(entity::plan_limit::Model {
                plan_id: state.org.plan_id.unwrap_or_default(),
                metric_code: row.try_get("", "t_metric")?,
                included: row.try_get("", "t_included")?,
                enforcement: sea_orm::ActiveEnum::try_from_value(
                    &row.try_get::<String>("", "t_enforcement")?,
                )?,
                overage_unit_price: row.try_get("", "t_price")?,
            }),
            _ => {}
        }
    }
    Ok(states)
}

/// The period rows (flags) of `orgs` in `period`.
pub async fn period_rows<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    orgs: &[OrganizationId],
    period: Period,
) -> Result<Vec<organization_usage::Model>, DbErr> {
    let orgs = scoped_ids(scope, orgs);
    if orgs.is_empty() {
        return Ok(vec![]);
    }
    organization_usage::Entity::find()
        .filter(organization_usage::Column::OrganizationId.is_in(orgs.iter().map(|o| o.0)))
        .filter(organization_usage::Column::PeriodStart.eq(period.start))
        .all(db)
        .await
}

/// Takes the organization's writer lock (`recording::lock_org`) and creates the period row if needed.
/// Every change to an organization's usage takes this lock first, so flags and alerts are evaluated
/// on a consistent view.
/// Answers the period's alert epoch, or None when the scope may not touch the organization.
pub async fn lock_period<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    period: Period,
) -> Result<Option<i32>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    super::recording::lock_org(db, org).await?;
    let now = Utc::now();
    let row = query_one(
        db,
        "INSERT INTO organization_usage \
           (organization_id, period_start, period_end, has_exceeded_limits, exceeded_limits_details, alert_epoch, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 0, $6, $6) \
         ON CONFLICT (organization_id, period_start) DO UPDATE SET updated_at = excluded.updated_at \
         RETURNING alert_epoch",
        vec![
            org.0.into(),
            period.start.into(),
            period.end().into(),
            false.into(),
            serde_json::json!({}).into(),
            now.into(),
        ],
    )
    .await?;
    row.map(|r| r.try_get::<i32>("", "alert_epoch")).transpose()
}

/// Raises the alert epoch of a period (a plan change re-arms its alerts).
pub async fn rearm_alerts<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    period: Period,
) -> Result<(), DbErr> {
    if !scope.allows(org) {
        return Ok(());
    }
    execute(
        db,
        "UPDATE organization_usage SET alert_epoch = alert_epoch + 1 WHERE organization_id = $1 AND period_start = $2",
        vec![org.0.into(), period.start.into()],
    )
    .await
    .map(|_| ())
}

/// Makes sure a counter row exists; a GAUGE starts from its latest earlier reading.
pub async fn ensure_counter<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    period: Period,
    metric: &str,
    kind: MetricKind,
) -> Result<(), DbErr> {
    if !scope.allows(org) {
        return Ok(());
    }
    let initial = match kind {
        MetricKind::Counter => "0",
        MetricKind::Gauge => {
            "COALESCE((SELECT p.used FROM usage_counters p WHERE p.organization_id = $1 AND p.metric_code = $3 \
             AND p.period_start < $2 ORDER BY p.period_start DESC LIMIT 1), 0)"
        }
    };
    let sql = format!(
        "INSERT INTO usage_counters (organization_id, period_start, metric_code, used, credits, updated_at) \
         VALUES ($1, $2, $3, {initial}, 0, $4) \
         ON CONFLICT (organization_id, period_start, metric_code) DO NOTHING"
    );
    execute(
        db,
        &sql,
        vec![
            org.0.into(),
            period.start.into(),
            metric.into(),
            Utc::now().into(),
        ],
    )
    .await
    .map(|_| ())
}

/// A counter's `used`, when the row exists.
pub async fn counter_used<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    period: Period,
    metric: &str,
) -> Result<Option<i64>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    let row = query_one(
        db,
        "SELECT used FROM usage_counters WHERE organization_id = $1 AND period_start = $2 AND metric_code = $3",
        vec![org.0.into(), period.start.into(), metric.into()],
    )
    .await?;
    row.map(|r| r.try_get::<i64>("", "used")).transpose()
}

/// How a counter moves.
#[derive(Debug, Clone, Copy)]
pub enum CounterChange {
    /// used = used + delta
    Add(i64),
    /// used = value (a GAUGE reading, or a reset to zero)
    Set(i64),
    /// credits = credits + delta
    Credit(i64),
}

/// Moves a counter atomically in SQL. With `hard_cap` (the plan's included amount under HARD
/// enforcement), the update only happens when the new value stays within `hard_cap + credits`, checked
/// in the same statement. Answers the new (used, credits), or None when the cap refused the change.
pub async fn change_counter<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    period: Period,
    metric: &str,
    change: CounterChange,
    hard_cap: Option<i64>,
) -> Result<Option<(i64, i64)>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    // The moved column stays within a BIGINT: the guard refuses a change that would leave it (an
    // overflow would otherwise fail the statement on Postgres and turn the value into a REAL on
    // SQLite), and the cap is compared without adding (used - credits <= cap - delta).
    let (set, moved, capped, amount) = match change {
        CounterChange::Add(d) => (
            "used = used + $4",
            Some("used"),
            "used - credits <= $6 - $4",
            d,
        ),
        CounterChange::Set(v) => ("used = $4", None, "$4 - credits <= $6", v),
        CounterChange::Credit(d) => (
            "credits = credits + $4",
            Some("credits"),
            "used - credits <= $6",
            d,
        ),
    };
    let guard = match moved {
        Some(column) if amount >= 0 => format!(" AND {column} <= {} - $4", i64::MAX),
        Some(column) => format!(" AND {column} >= {} - $4", i64::MIN),
        None => String::new(),
    };
    let mut values: Vec<Value> = vec![
        org.0.into(),
        period.start.into(),
        metric.into(),
        amount.into(),
        Utc::now().into(),
    ];
    let cap = match hard_cap {
        Some(cap) => {
            values.push(cap.into());
            format!(" AND {capped}")
        }
        None => String::new(),
    };
    let sql = format!(
        "UPDATE usage_counters SET {set}, updated_at = $5 \
         WHERE organization_id = $1 AND period_start = $2 AND metric_code = $3{guard}{cap} \
         RETURNING used, credits"
    );
    let row = query_one(db, &sql, values).await?;
    if let Some(r) = row {
        return Ok(Some((
            r.try_get::<i64>("", "used")?,
            r.try_get::<i64>("", "credits")?,
        )));
    }
    // Refused: by the cap, or by the guard (told apart here, off the common path).
    let current = query_one(
        db,
        "SELECT used, credits FROM usage_counters \
         WHERE organization_id = $1 AND period_start = $2 AND metric_code = $3",
        vec![org.0.into(), period.start.into(), metric.into()],
    )
    .await?;
    if let Some(r) = current {
        let (used, credits) = (
            r.try_get::<i64>("", "used")?,
            r.try_get::<i64>("", "credits")?,
        );
        let overflows = match moved {
            Some("used") => used.checked_add(amount).is_none(),
            Some(_) => credits.checked_add(amount).is_none(),
            None => false,
        };
        if overflows {
            return Err(DbErr::Custom(COUNTER_OVERFLOW.to_owned()));
        }
    }
    Ok(None)
}

/// The error of a change that would take a counter past the largest value it can hold.
pub const COUNTER_OVERFLOW: &str = "tollgate: counter overflow";

pub struct NewEvent {
    pub org: OrganizationId,
    pub metric_code: String,
    pub kind: UsageEventKind,
    pub quantity: i64,
    pub period: Period,
    pub idempotency_key: Option<String>,
    pub reference: Option<String>,
    pub reason: Option<String>,
    pub actor: Option<String>,
    pub reverses_event_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// Appends to the ledger. With an idempotency key already used by the organization, nothing is
/// written and None comes back.
pub async fn insert_event<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    e: NewEvent,
) -> Result<Option<usage_event::Model>, DbErr> {
    if !scope.allows(e.org) {
        return Ok(None);
    }
    let model = usage_event::Model {
        organization_id: e.org.0,
        id: Uuid::now_v7(),
        metric_code: e.metric_code,
        kind: e.kind,
        quantity: e.quantity,
        period_start: e.period.start,
        idempotency_key: e.idempotency_key,
        reference: e.reference,
        reason: e.reason,
        actor: e.actor,
        reverses_event_id: e.reverses_event_id,
        membership_id: None,
        cycle: None,
        overage: false,
        charge: 0,
        occurred_at: e.occurred_at,
        recorded_at: Utc::now(),
    };
    let active: usage_event::ActiveModel = model.clone().into();
    let res = usage_event::Entity::insert(active)
        .on_conflict(
            OnConflict::columns([
                usage_event::Column::OrganizationId,
                usage_event::Column::IdempotencyKey,
            ])
            .do_nothing()
            .to_owned(),
        )
        .try_insert()
        .exec_without_returning(db)
        .await?;
    Ok(match res {
        sea_orm::TryInsertResult::Inserted(n) if n > 0 => Some(model),
        _ => None,
    })
}

pub async fn event_by_key<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    key: &str,
) -> Result<Option<usage_event::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    usage_event::Entity::find()
        .filter(usage_event::Column::OrganizationId.eq(org.0))
        .filter(usage_event::Column::IdempotencyKey.eq(key))
        .one(db)
        .await
}

/// The USAGE events of an organization carrying a reference that no REVERSAL points at yet: the
/// partial index on references finds them, the one on `reverses_event_id` tells which are reversed.
pub(crate) const UNREVERSED_BY_REFERENCE: &str = "SELECT e.* FROM usage_events e \
     WHERE e.organization_id = $1 AND e.reference = $2 AND e.kind = 'USAGE' \
     AND NOT EXISTS (SELECT 1 FROM usage_events r WHERE r.organization_id = e.organization_id \
                     AND r.reverses_event_id = e.id)";

/// USAGE events carrying `reference` that no REVERSAL points at yet, oldest first (not a
/// membership's). The membership filter and the order are applied here rather than in SQL: there,
/// without statistics, SQLite served `membership_id IS NULL` from the membership index and
/// `ORDER BY id` from the primary key, each reading every event of the organization.
pub async fn unreversed_by_reference<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    reference: &str,
) -> Result<Vec<usage_event::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    let mut events = usage_event::Entity::find()
        .from_raw_sql(stmt(
            db.get_database_backend(),
            UNREVERSED_BY_REFERENCE,
            vec![org.0.into(), reference.into()],
        ))
        .all(db)
        .await?;
    events.retain(|e| e.membership_id.is_none());
    events.sort_by_key(|e| e.id);
    Ok(events)
}

/// Ledger events of one organization, newest first, after the event id `after`.
pub async fn events_page<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    metric: Option<&str>,
    kind: Option<UsageEventKind>,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<usage_event::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    let mut q = usage_event::Entity::find()
        .filter(usage_event::Column::OrganizationId.eq(org.0))
        .filter(usage_event::Column::MembershipId.is_null());
    if let Some(m) = metric {
        q = q.filter(usage_event::Column::MetricCode.eq(m));
    }
    if let Some(k) = kind {
        q = q.filter(usage_event::Column::Kind.eq(k));
    }
    if let Some(a) = after {
        q = q.filter(usage_event::Column::Id.lt(a));
    }
    q.order_by_desc(usage_event::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

/// The smallest UUIDv7 of a millisecond: ids at or after `at` compare greater or equal.
pub fn min_v7(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().max(0) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

/// Alerts, newest first: of one organization, or of every organization the scope sees.
pub async fn alerts_page<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: Option<OrganizationId>,
    since: Option<DateTime<Utc>>,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<usage_alert::Model>, DbErr> {
    let mut q = usage_alert::Entity::find();
    match (scope, org) {
        (Scope::Tenant(own), Some(o)) if own != o => return Ok(vec![]),
        (Scope::Tenant(own), _) => q = q.filter(usage_alert::Column::OrganizationId.eq(own.0)),
        (Scope::Platform, Some(o)) => q = q.filter(usage_alert::Column::OrganizationId.eq(o.0)),
        (Scope::Platform, None) => {}
    }
    if let Some(s) = since {
        q = q.filter(usage_alert::Column::Id.gte(min_v7(s)));
    }
    if let Some(a) = after {
        q = q.filter(usage_alert::Column::Id.lt(a));
    }
    q.order_by_desc(usage_alert::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

pub async fn insert_history<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    row: subscription_history::Model,
) -> Result<Option<subscription_history::Model>, DbErr> {
    if !scope.allows(OrganizationId(row.organization_id)) {
        return Ok(None);
    }
    let active: subscription_history::ActiveModel = row.clone().into();
    subscription_history::Entity::insert(active)
        .exec_without_returning(db)
        .await?;
    Ok(Some(row))
}

/// Organizations on a plan that have a row for `period`, in id order (the order their period locks
/// are taken in, so two transactions that lock several cannot deadlock).
pub async fn orgs_in_period_on_plan<C: ConnectionTrait>(
    db: &C,
    plan_id: Uuid,
    period: Period,
) -> Result<Vec<OrganizationId>, DbErr> {
    let rows = query_all(
        db,
        "SELECT u.organization_id AS id FROM organization_usage u \
         JOIN organizations o ON o.id = u.organization_id \
         WHERE o.plan_id = $1 AND u.period_start = $2 ORDER BY u.organization_id",
        vec![plan_id.into(), period.start.into()],
    )
    .await?;
    rows.iter()
        .map(|r| r.try_get::<Uuid>("", "id").map(OrganizationId))
        .collect()
}

/// Whether the organization's subscription history holds a change of this type.
pub async fn has_history_of<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    change: entity::enums::ChangeType,
) -> Result<bool, DbErr> {
    if !scope.allows(org) {
        return Ok(false);
    }
    Ok(subscription_history::Entity::find()
        .filter(subscription_history::Column::OrganizationId.eq(org.0))
        .filter(subscription_history::Column::ChangeType.eq(change))
        .one(db)
        .await?
        .is_some())
}

/// Subscription history, newest effective date first, then newest recorded first; `after` is the
/// (effective date, id) of the last row of the previous page.
pub async fn history_page<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    after: Option<(NaiveDate, Uuid)>,
    limit: u64,
) -> Result<Vec<subscription_history::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    let mut q = subscription_history::Entity::find()
        .filter(subscription_history::Column::OrganizationId.eq(org.0));
    if let Some((date, id)) = after {
        q = q.filter(
            sea_orm::Condition::any()
                .add(subscription_history::Column::EffectiveDate.lt(date))
                .add(
                    sea_orm::Condition::all()
                        .add(subscription_history::Column::EffectiveDate.eq(date))
                        .add(subscription_history::Column::Id.lt(id)),
                ),
        );
    }
    q.order_by_desc(subscription_history::Column::EffectiveDate)
        .order_by_desc(subscription_history::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

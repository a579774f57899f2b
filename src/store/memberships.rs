//! Memberships' tables (see the migration m20261129_000010): membership plans, customers,
//! memberships, their counters per cycle (`membership_usage`), bookings and the audit of status
//! changes; a membership's ledger events are `usage_events` rows. Every function takes the caller's
//! scope and filters by organization in the statement.

use chrono::{DateTime, Utc};
use entity::{
    booking, customer, membership, membership_change, membership_plan, membership_usage,
    usage_event,
};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Select, Value,
};
use uuid::Uuid;

use super::{execute, query_all, stmt};
use crate::domain::{OrganizationId, Scope};

/// One service, as stored (quantities are scaled by 10^4).
pub const ONE: i64 = 10_000;

/// `q` limited to the scope's organization (the platform sees every one).
fn scoped<E: EntityTrait>(q: Select<E>, scope: Scope, col: impl ColumnTrait) -> Select<E> {
    match scope {
        Scope::Platform => q,
        Scope::Tenant(org) => q.filter(col.eq(org.0)),
    }
}

// ---- membership plans ----

/// Creates or updates an organization's plan by code; answers the stored plan.
pub async fn upsert_plan<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    row: membership_plan::Model,
) -> Result<Option<membership_plan::Model>, DbErr> {
    let org = OrganizationId(row.organization_id);
    if !scope.allows(org) {
        return Ok(None);
    }
    let code = row.code.clone();
    let active: membership_plan::ActiveModel = row.into();
    use membership_plan::Column as P;
    membership_plan::Entity::insert(active)
        .on_conflict(
            OnConflict::columns([P::OrganizationId, P::Code])
                .update_columns([
                    P::Name,
                    P::Price,
                    P::Currency,
                    P::Interval,
                    P::ServicesPerCycle,
                    P::DiscountPct,
                    P::AllowOverage,
                    P::OverageRate,
                    P::Active,
                    P::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    plan_by_code(db, scope, org, &code).await
}

pub async fn plan_by_code<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    code: &str,
) -> Result<Option<membership_plan::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    membership_plan::Entity::find()
        .filter(membership_plan::Column::OrganizationId.eq(org.0))
        .filter(membership_plan::Column::Code.eq(code))
        .one(db)
        .await
}

pub async fn plans_of<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    include_inactive: bool,
) -> Result<Vec<membership_plan::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    let mut q =
        membership_plan::Entity::find().filter(membership_plan::Column::OrganizationId.eq(org.0));
    if !include_inactive {
        q = q.filter(membership_plan::Column::Active.eq(true));
    }
    q.order_by_asc(membership_plan::Column::Code).all(db).await
}

pub async fn plans_by_ids<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    ids: &[Uuid],
) -> Result<Vec<membership_plan::Model>, DbErr> {
    scoped(
        membership_plan::Entity::find().filter(membership_plan::Column::Id.is_in(ids.to_vec())),
        scope,
        membership_plan::Column::OrganizationId,
    )
    .all(db)
    .await
}

/// Whether any membership (whatever its status) is of this plan.
pub async fn plan_in_use<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    plan: Uuid,
) -> Result<bool, DbErr> {
    if !scope.allows(org) {
        return Ok(false);
    }
    Ok(membership::Entity::find()
        .filter(membership::Column::OrganizationId.eq(org.0))
        .filter(membership::Column::PlanId.eq(plan))
        .one(db)
        .await?
        .is_some())
}

// ---- customers ----

/// Inserts a customer unless its externalId is taken in the organization (then false).
pub async fn insert_customer<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    row: customer::Model,
) -> Result<bool, DbErr> {
    if !scope.allows(OrganizationId(row.organization_id)) {
        return Ok(false);
    }
    let active: customer::ActiveModel = row.into();
    let n = customer::Entity::insert(active)
        .on_conflict(
            OnConflict::columns([
                customer::Column::OrganizationId,
                customer::Column::ExternalId,
            ])
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(n == 1)
}

pub async fn customer_by_external<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    external_id: &str,
) -> Result<Option<customer::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    customer::Entity::find()
        .filter(customer::Column::OrganizationId.eq(org.0))
        .filter(customer::Column::ExternalId.eq(external_id))
        .one(db)
        .await
}

pub async fn customers_by_ids<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    ids: &[Uuid],
) -> Result<Vec<customer::Model>, DbErr> {
    scoped(
        customer::Entity::find().filter(customer::Column::Id.is_in(ids.to_vec())),
        scope,
        customer::Column::OrganizationId,
    )
    .all(db)
    .await
}

fn customer_search(org: OrganizationId, search: Option<&str>) -> Select<customer::Entity> {
    let mut q = customer::Entity::find().filter(customer::Column::OrganizationId.eq(org.0));
    if let Some(s) = search.filter(|s| !s.is_empty()) {
        // Case-insensitive substring of the name, email or externalId.
        q = q.filter(
            sea_orm::Condition::any()
                .add(super::contains_ci(customer::Column::Name, s))
                .add(super::contains_ci(customer::Column::Email, s))
                .add(super::contains_ci(customer::Column::ExternalId, s)),
        );
    }
    q
}

/// A page of an organization's customers in id order (creation order: ids are UUIDv7).
pub async fn customers_page<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    search: Option<&str>,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<customer::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    let mut q = customer_search(org, search);
    if let Some(a) = after {
        q = q.filter(customer::Column::Id.gt(a));
    }
    q.order_by_asc(customer::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

pub async fn customers_count<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    search: Option<&str>,
) -> Result<u64, DbErr> {
    if !scope.allows(org) {
        return Ok(0);
    }
    customer_search(org, search).count(db).await
}

// ---- memberships ----

/// Inserts a membership unless its customer already holds an ACTIVE or PAUSED one (then false).
pub async fn insert_membership<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    row: membership::Model,
) -> Result<bool, DbErr> {
    if !scope.allows(OrganizationId(row.organization_id)) {
        return Ok(false);
    }
    let active: membership::ActiveModel = row.into();
    let n = membership::Entity::insert(active)
        .on_conflict(
            OnConflict::columns([
                membership::Column::OrganizationId,
                membership::Column::CustomerId,
            ])
            .target_and_where(Expr::cust("status IN ('ACTIVE', 'PAUSED')"))
            .do_nothing()
            .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(n == 1)
}

pub async fn memberships_by_ids<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    ids: &[Uuid],
) -> Result<Vec<membership::Model>, DbErr> {
    scoped(
        membership::Entity::find().filter(membership::Column::Id.is_in(ids.to_vec())),
        scope,
        membership::Column::OrganizationId,
    )
    .all(db)
    .await
}

/// The memberships of several customers, newest first.
pub async fn memberships_of_customers<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    customers: &[Uuid],
) -> Result<Vec<membership::Model>, DbErr> {
    if customers.is_empty() {
        return Ok(vec![]);
    }
    scoped(
        membership::Entity::find().filter(membership::Column::CustomerId.is_in(customers.to_vec())),
        scope,
        membership::Column::OrganizationId,
    )
    .order_by_desc(membership::Column::Id)
    .all(db)
    .await
}

/// A customer's memberships, newest first.
pub async fn memberships_of<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    customer: Uuid,
) -> Result<Vec<membership::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    membership::Entity::find()
        .filter(membership::Column::OrganizationId.eq(org.0))
        .filter(membership::Column::CustomerId.eq(customer))
        .order_by_desc(membership::Column::Id)
        .all(db)
        .await
}

/// The membership an organization bills through a Stripe subscription (the newest, if several).
pub async fn membership_by_subscription<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    subscription: &str,
) -> Result<Option<membership::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    membership::Entity::find()
        .filter(membership::Column::OrganizationId.eq(org.0))
        .filter(membership::Column::StripeSubscriptionId.eq(subscription))
        .order_by_desc(membership::Column::Id)
        .one(db)
        .await
}

/// Locks a membership for the rest of the transaction (a row lock on Postgres; SQLite writers are
/// serialized) and answers it. Every change to a membership's status, usage or holds takes it
/// first, so two bookings never take the last service twice.
pub async fn lock_membership<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    id: Uuid,
) -> Result<Option<membership::Model>, DbErr> {
    let (filter, values): (&str, Vec<Value>) = match scope {
        Scope::Platform => ("", vec![id.into()]),
        Scope::Tenant(org) => (" AND organization_id = $2", vec![id.into(), org.0.into()]),
    };
    membership::Entity::find()
        .from_raw_sql(stmt(
            db.get_database_backend(),
            &format!(
                "UPDATE memberships SET updated_at = updated_at WHERE id = $1{filter} RETURNING *"
            ),
            values,
        ))
        .one(db)
        .await
}

/// Writes a membership's status and pause state (the caller holds its lock).
pub async fn save_membership<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    m: &membership::Model,
) -> Result<(), DbErr> {
    if !scope.allows(OrganizationId(m.organization_id)) {
        return Ok(());
    }
    execute(
        db,
        "UPDATE memberships SET status = $3, paused_at = $4, pauses = $5, cancelled_at = $6, updated_at = $7 \
         WHERE id = $1 AND organization_id = $2",
        vec![
            m.id.into(),
            m.organization_id.into(),
            m.status.clone().into(),
            m.paused_at.into(),
            m.pauses.clone().into(),
            m.cancelled_at.into(),
            m.updated_at.into(),
        ],
    )
    .await
    .map(|_| ())
}

pub async fn insert_change<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    row: membership_change::Model,
) -> Result<(), DbErr> {
    if !scope.allows(OrganizationId(row.organization_id)) {
        return Ok(());
    }
    let active: membership_change::ActiveModel = row.into();
    membership_change::Entity::insert(active)
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

// ---- counters per cycle ----

/// The key of a membership's counters in one cycle.
#[derive(Debug, Clone, Copy)]
pub struct CycleKey {
    pub org: OrganizationId,
    pub membership: Uuid,
    pub cycle: i32,
}

/// Makes sure the cycle's counters exist (with the plan's allowance when the cycle was first seen).
pub async fn ensure_cycle<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    key: CycleKey,
    bounds: (DateTime<Utc>, DateTime<Utc>),
    included: i64,
    currency: &str,
) -> Result<(), DbErr> {
    if !scope.allows(key.org) {
        return Ok(());
    }
    execute(
        db,
        "INSERT INTO membership_usage (organization_id, membership_id, cycle, cycle_start, cycle_end, \
           included_services, credits, used, held, overage_count, overage_charges, currency, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 0, 0, 0, 0, 0, $7, $8) \
         ON CONFLICT (organization_id, membership_id, cycle) DO UPDATE SET cycle_end = excluded.cycle_end",
        vec![
            key.org.0.into(),
            key.membership.into(),
            key.cycle.into(),
            bounds.0.into(),
            bounds.1.into(),
            included.into(),
            currency.into(),
            Utc::now().into(),
        ],
    )
    .await
    .map(|_| ())
}

/// Counters of some memberships' cycles (the pairs asked for that exist).
pub async fn usage_rows<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    keys: &[(Uuid, i32)],
) -> Result<Vec<membership_usage::Model>, DbErr> {
    if keys.is_empty() {
        return Ok(vec![]);
    }
    let ids: Vec<Uuid> = keys.iter().map(|k| k.0).collect();
    let cycles: Vec<i32> = keys.iter().map(|k| k.1).collect();
    let rows = scoped(
        membership_usage::Entity::find()
            .filter(membership_usage::Column::MembershipId.is_in(ids))
            .filter(membership_usage::Column::Cycle.is_in(cycles)),
        scope,
        membership_usage::Column::OrganizationId,
    )
    .all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|r| keys.contains(&(r.membership_id, r.cycle)))
        .collect())
}

/// How a cycle's counters move (quantities scaled).
#[derive(Debug, Clone, Copy)]
pub enum UsageChange {
    /// Hold one service, only while one remains (an INCLUDED booking).
    HoldIncluded,
    /// Hold one service past the allowance (an OVERAGE booking).
    HoldOverage,
    /// Give a held service back.
    Release,
    /// A held service is used: held - 1, used + 1, with its overage charge.
    UseHold { overage: bool, charge: i64 },
    /// used + q (a correction), refused when it would go below zero.
    Adjust(i64),
    /// credits + q
    Credit(i64),
    /// used = 0
    Reset,
}

/// Moves a cycle's counters in one statement whose condition guards it; answers the new row, or
/// None when the guard refused (no service left, nothing held, below zero, too large).
pub async fn change_usage<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    key: CycleKey,
    change: UsageChange,
) -> Result<Option<membership_usage::Model>, DbErr> {
    if !scope.allows(key.org) {
        return Ok(None);
    }
    let max = i64::MAX / 2;
    // $1..$3 the key, $4 the amount, $5 the time, $6 an overage charge.
    let (set, guard, amount, charge): (&str, String, i64, Option<i64>) = match change {
        UsageChange::HoldIncluded => (
            "held = held + $4",
            "included_services + credits - used - held >= $4".into(),
            ONE,
            None,
        ),
        UsageChange::HoldOverage => ("held = held + $4", format!("held <= {max}"), ONE, None),
        UsageChange::Release => ("held = held - $4", "held >= $4".into(), ONE, None),
        UsageChange::UseHold { overage, charge } => (
            "held = held - $4, used = used + $4, overage_count = overage_count + $4 * $7, \
             overage_charges = overage_charges + $6",
            format!("held >= $4 AND used <= {max} AND overage_charges <= {max} - $6"),
            ONE,
            Some(if overage { charge } else { 0 }),
        ),
        UsageChange::Adjust(q) => (
            "used = used + $4",
            format!("used + $4 >= 0 AND used + $4 <= {max}"),
            q,
            None,
        ),
        UsageChange::Credit(q) => (
            "credits = credits + $4",
            format!("credits + $4 >= 0 AND credits <= {max} - $4"),
            q,
            None,
        ),
        UsageChange::Reset => ("used = 0 * $4", "used >= 0".into(), 0, None),
    };
    let mut values: Vec<Value> = vec![
        key.org.0.into(),
        key.membership.into(),
        key.cycle.into(),
        amount.into(),
        Utc::now().into(),
    ];
    if let (Some(c), UsageChange::UseHold { overage, .. }) = (charge, change) {
        values.push(c.into());
        values.push(i64::from(overage).into());
    }
    let sql = format!(
        "UPDATE membership_usage SET {set}, updated_at = $5 \
         WHERE organization_id = $1 AND membership_id = $2 AND cycle = $3 AND {guard} \
         RETURNING *"
    );
    membership_usage::Entity::find()
        .from_raw_sql(stmt(db.get_database_backend(), &sql, values))
        .one(db)
        .await
}

// ---- bookings ----

/// Inserts a booking unless its reference is taken in the organization (then false).
pub async fn insert_booking<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    row: booking::Model,
) -> Result<bool, DbErr> {
    if !scope.allows(OrganizationId(row.organization_id)) {
        return Ok(false);
    }
    let active: booking::ActiveModel = row.into();
    let n = booking::Entity::insert(active)
        .on_conflict(
            OnConflict::columns([booking::Column::OrganizationId, booking::Column::Reference])
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(n == 1)
}

/// A booking by its reference, locked for the rest of the transaction when `lock` (Postgres).
pub async fn booking_by_reference<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    reference: &str,
    lock: bool,
) -> Result<Option<booking::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    if lock {
        return booking::Entity::find()
            .from_raw_sql(stmt(
                db.get_database_backend(),
                "UPDATE bookings SET updated_at = updated_at WHERE organization_id = $1 AND reference = $2 RETURNING *",
                vec![org.0.into(), reference.into()],
            ))
            .one(db)
            .await;
    }
    booking::Entity::find()
        .filter(booking::Column::OrganizationId.eq(org.0))
        .filter(booking::Column::Reference.eq(reference))
        .one(db)
        .await
}

/// Bookings of an organization by their references.
pub async fn bookings_by_references<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    references: &[String],
) -> Result<Vec<booking::Model>, DbErr> {
    if !scope.allows(org) || references.is_empty() {
        return Ok(vec![]);
    }
    booking::Entity::find()
        .filter(booking::Column::OrganizationId.eq(org.0))
        .filter(booking::Column::Reference.is_in(references.to_vec()))
        .all(db)
        .await
}

/// Writes a booking's state (the caller holds its lock).
pub async fn save_booking<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    b: &booking::Model,
) -> Result<(), DbErr> {
    if !scope.allows(OrganizationId(b.organization_id)) {
        return Ok(());
    }
    let active: booking::ActiveModel = b.clone().into();
    let active = sea_orm::ActiveModelTrait::reset_all(active);
    sea_orm::ActiveModelTrait::update(active, db)
        .await
        .map(|_| ())
}

/// Bookings of a membership (or of a customer), newest first, after the booking id `after`.
#[allow(clippy::too_many_arguments)]
pub async fn bookings_page<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    membership: Uuid,
    status: Option<&str>,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<booking::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    let mut q = booking::Entity::find()
        .filter(booking::Column::OrganizationId.eq(org.0))
        .filter(booking::Column::MembershipId.eq(membership));
    if let Some(s) = status {
        q = q.filter(booking::Column::Status.eq(s));
    }
    if let Some(a) = after {
        q = q.filter(booking::Column::Id.lt(a));
    }
    q.order_by_desc(booking::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

/// The open bookings of a membership (neither COMPLETED nor CANCELLED), holding a service or not.
pub async fn open_bookings<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    membership: Uuid,
) -> Result<Vec<booking::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    booking::Entity::find()
        .filter(booking::Column::OrganizationId.eq(org.0))
        .filter(booking::Column::MembershipId.eq(membership))
        .filter(booking::Column::Status.is_not_in(["COMPLETED", "CANCELLED"]))
        .order_by_asc(booking::Column::Id)
        .all(db)
        .await
}

// ---- the ledger ----

/// Appends a membership's event to the ledger.
pub async fn insert_event<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    e: usage_event::Model,
) -> Result<(), DbErr> {
    if !scope.allows(OrganizationId(e.organization_id)) || e.membership_id.is_none() {
        return Err(DbErr::RecordNotInserted);
    }
    let active: usage_event::ActiveModel = e.into();
    usage_event::Entity::insert(active)
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// A membership's ledger events, newest first, occurred within [from, to], after the event id `after`.
#[allow(clippy::too_many_arguments)]
pub async fn events_page<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    membership: Uuid,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    after: Option<Uuid>,
    limit: u64,
) -> Result<Vec<usage_event::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    let mut q = usage_event::Entity::find()
        .filter(usage_event::Column::OrganizationId.eq(org.0))
        .filter(usage_event::Column::MembershipId.eq(membership));
    if let Some(f) = from {
        q = q.filter(usage_event::Column::OccurredAt.gte(f));
    }
    if let Some(t) = to {
        q = q.filter(usage_event::Column::OccurredAt.lte(t));
    }
    if let Some(a) = after {
        q = q.filter(usage_event::Column::Id.lt(a));
    }
    q.order_by_desc(usage_event::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

// ---- recompute ----

/// A membership cycle's counters as the ledger and the bookings say they should be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub used: i64,
    pub credits: i64,
    pub held: i64,
    pub overage_count: i64,
    pub overage_charges: i64,
}

/// The ledger of an organization's memberships summed per membership and cycle, and the holds of
/// their bookings.
pub async fn expected_usage<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
) -> Result<std::collections::BTreeMap<(Uuid, i32), Expected>, DbErr> {
    let mut out = std::collections::BTreeMap::<(Uuid, i32), Expected>::new();
    if !scope.allows(org) {
        return Ok(out);
    }
    let sums = query_all(
        db,
        "SELECT membership_id, cycle, \
           CAST(COALESCE(SUM(CASE WHEN kind <> 'CREDIT' THEN quantity ELSE 0 END), 0) AS BIGINT) AS used, \
           CAST(COALESCE(SUM(CASE WHEN kind = 'CREDIT' THEN quantity ELSE 0 END), 0) AS BIGINT) AS credits, \
           CAST(COALESCE(SUM(CASE WHEN overage THEN quantity ELSE 0 END), 0) AS BIGINT) AS overage_count, \
           CAST(COALESCE(SUM(charge), 0) AS BIGINT) AS overage_charges \
         FROM usage_events WHERE organization_id = $1 AND membership_id IS NOT NULL \
         GROUP BY membership_id, cycle",
        vec![org.0.into()],
    )
    .await?;
    for r in sums {
        let key = (
            r.try_get::<Uuid>("", "membership_id")?,
            r.try_get::<Option<i32>>("", "cycle")?.unwrap_or(0),
        );
        let e = out.entry(key).or_default();
        e.used = r.try_get("", "used")?;
        e.credits = r.try_get("", "credits")?;
        e.overage_count = r.try_get("", "overage_count")?;
        e.overage_charges = r.try_get("", "overage_charges")?;
    }
    let holds = query_all(
        db,
        "SELECT membership_id, cycle, CAST(COUNT(*) AS BIGINT) AS held FROM bookings \
         WHERE organization_id = $1 AND holds_service AND membership_id IS NOT NULL \
         GROUP BY membership_id, cycle",
        vec![org.0.into()],
    )
    .await?;
    for r in holds {
        let key = (
            r.try_get::<Uuid>("", "membership_id")?,
            r.try_get::<Option<i32>>("", "cycle")?.unwrap_or(0),
        );
        out.entry(key).or_default().held = r.try_get::<i64>("", "held")? * ONE;
    }
    Ok(out)
}

/// Every membership counter row of an organization.
pub async fn usage_of_org<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
) -> Result<Vec<membership_usage::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    membership_usage::Entity::find()
        .filter(membership_usage::Column::OrganizationId.eq(org.0))
        .all(db)
        .await
}

/// Writes a cycle's counters (the repair step of recompute).
pub async fn set_usage<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    key: CycleKey,
    e: &Expected,
) -> Result<(), DbErr> {
    if !scope.allows(key.org) {
        return Ok(());
    }
    execute(
        db,
        "UPDATE membership_usage SET used = $4, credits = $5, held = $6, overage_count = $7, \
           overage_charges = $8, updated_at = $9 \
         WHERE organization_id = $1 AND membership_id = $2 AND cycle = $3",
        vec![
            key.org.0.into(),
            key.membership.into(),
            key.cycle.into(),
            e.used.into(),
            e.credits.into(),
            e.held.into(),
            e.overage_count.into(),
            e.overage_charges.into(),
            Utc::now().into(),
        ],
    )
    .await
    .map(|_| ())
}

/// The audit of a membership's status changes, oldest first.
pub async fn changes_of<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    membership: Uuid,
) -> Result<Vec<membership_change::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    membership_change::Entity::find()
        .filter(membership_change::Column::OrganizationId.eq(org.0))
        .filter(membership_change::Column::MembershipId.eq(membership))
        .order_by_asc(membership_change::Column::Id)
        .all(db)
        .await
}

pub async fn insert_plan_history<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    row: entity::membership_plan_history::Model,
) -> Result<(), DbErr> {
    if !scope.allows(OrganizationId(row.organization_id)) {
        return Ok(());
    }
    let active: entity::membership_plan_history::ActiveModel = row.into();
    entity::membership_plan_history::Entity::insert(active)
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

/// A membership plan's audit, oldest first.
pub async fn plan_history<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    plan: Uuid,
) -> Result<Vec<entity::membership_plan_history::Model>, DbErr> {
    use entity::membership_plan_history as h;
    if !scope.allows(org) {
        return Ok(vec![]);
    }
    h::Entity::find()
        .filter(h::Column::OrganizationId.eq(org.0))
        .filter(h::Column::PlanId.eq(plan))
        .order_by_asc(h::Column::Id)
        .all(db)
        .await
}

//! Memberships (seed 002) on the usage engine: an organization's own customers hold memberships of
//! its plans; bookings are priced with their benefits (`pricing`), hold a service from creation and
//! use it on completion (`bookings`); corrections and status changes are audited (`admin`). A
//! membership is a plan holder like an organization: its events go to the one ledger
//! (`usage_events` with the membership and its cycle), its counters per cycle (`membership_usage`)
//! are a projection of that ledger and of its bookings' holds that recompute rebuilds, and its cycle
//! is its own (`cycles`), renewing by itself.

pub mod admin;
pub mod bookings;
pub mod cycles;
pub mod pricing;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use entity::{customer, membership, membership_plan, membership_usage};
use rust_decimal::Decimal;
use sea_orm::ConnectionTrait;
use uuid::Uuid;

use self::cycles::{Cycle, Interval, Schedule};
use super::access::{self, Action};
use super::recompute::{Difference, OrgReport};
use super::usage::Engine;
use super::{Amount, OrganizationId, Period, Scope, Viewer};
use crate::error::{AppError, AppResult};
use crate::store;
use crate::store::memberships::{CycleKey, Expected, ONE};

/// The metric code of a membership's events in the ledger.
pub const SERVICES: &str = "services";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipStatus {
    Active,
    Paused,
    Cancelled,
    PastDue,
}

impl MembershipStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "ACTIVE" => MembershipStatus::Active,
            "PAUSED" => MembershipStatus::Paused,
            "PAST_DUE" => MembershipStatus::PastDue,
            _ => MembershipStatus::Cancelled,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MembershipStatus::Active => "ACTIVE",
            MembershipStatus::Paused => "PAUSED",
            MembershipStatus::Cancelled => "CANCELLED",
            MembershipStatus::PastDue => "PAST_DUE",
        }
    }
}

/// The seed's booking state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BookingStatus {
    Initiated,
    PendingProvider,
    Accepted,
    PaymentPending,
    PaymentSucceeded,
    Completed,
    Cancelled,
}

impl BookingStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "INITIATED" => BookingStatus::Initiated,
            "PENDING_PROVIDER" => BookingStatus::PendingProvider,
            "ACCEPTED" => BookingStatus::Accepted,
            "PAYMENT_PENDING" => BookingStatus::PaymentPending,
            "PAYMENT_SUCCEEDED" => BookingStatus::PaymentSucceeded,
            "COMPLETED" => BookingStatus::Completed,
            _ => BookingStatus::Cancelled,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BookingStatus::Initiated => "INITIATED",
            BookingStatus::PendingProvider => "PENDING_PROVIDER",
            BookingStatus::Accepted => "ACCEPTED",
            BookingStatus::PaymentPending => "PAYMENT_PENDING",
            BookingStatus::PaymentSucceeded => "PAYMENT_SUCCEEDED",
            BookingStatus::Completed => "COMPLETED",
            BookingStatus::Cancelled => "CANCELLED",
        }
    }

    /// Whether a booking may move from `self` to `to` (forward only, steps may be skipped;
    /// CANCELLED from anything before COMPLETED). Staying put is not a move.
    pub fn may_become(self, to: BookingStatus) -> bool {
        match (self, to) {
            (BookingStatus::Completed | BookingStatus::Cancelled, _) => false,
            (_, BookingStatus::Cancelled) => true,
            (from, to) => to > from,
        }
    }
}

/// The time memberships run on, to the second (what both engines store exactly).
pub fn now(engine: &Engine) -> DateTime<Utc> {
    let n = engine.clock.now();
    DateTime::from_timestamp(n.timestamp(), 0).unwrap_or(n)
}

/// A membership's cycles as of `now`.
pub fn schedule(
    m: &membership::Model,
    plan: &membership_plan::Model,
    now: DateTime<Utc>,
) -> Schedule {
    let mut pauses = cycles::parse_pauses(&m.pauses);
    if let Some(p) = m.paused_at {
        pauses.push((p, now.max(p)));
    }
    Schedule {
        anchor: m.started_at,
        interval: Interval::parse(&plan.interval).unwrap_or(Interval::Month),
        pauses,
        cancelled_at: m.cancelled_at,
    }
}

/// The seed's subscription_usage_summaries row for one cycle.
#[derive(Debug, Clone)]
pub struct UsageView {
    pub cycle: Cycle,
    pub included: i64,
    pub credits: i64,
    pub used: i64,
    pub held: i64,
    pub overage_count: i64,
    pub overage_charges: i64,
    pub currency: String,
}

impl UsageView {
    pub fn from_row(
        cycle: Cycle,
        row: Option<&membership_usage::Model>,
        plan: &membership_plan::Model,
    ) -> Self {
        match row {
            Some(r) => UsageView {
                cycle,
                included: r.included_services,
                credits: r.credits,
                used: r.used,
                held: r.held,
                overage_count: r.overage_count,
                overage_charges: r.overage_charges,
                currency: r.currency.clone(),
            },
            None => UsageView {
                cycle,
                included: i64::from(plan.services_per_cycle) * ONE,
                credits: 0,
                used: 0,
                held: 0,
                overage_count: 0,
                overage_charges: 0,
                currency: plan.currency.clone(),
            },
        }
    }

    pub fn allowance(&self) -> i64 {
        self.included.saturating_add(self.credits)
    }

    /// max(allowance - used - held, 0), scaled.
    pub fn remaining(&self) -> i64 {
        self.allowance()
            .saturating_sub(self.used)
            .saturating_sub(self.held)
            .max(0)
    }

    pub fn dec(v: i64) -> Decimal {
        Amount::from_scaled(v).to_decimal().normalize()
    }
}

// ---- who may see what ----

/// The Customer of a CUSTOMER token (its organization's customer whose externalId is the sub).
pub async fn own_customer<C: ConnectionTrait>(
    db: &C,
    viewer: &Viewer,
) -> AppResult<Option<customer::Model>> {
    if !viewer.is_customer() {
        return Ok(None);
    }
    let Some(org) = viewer.org_id else {
        return Ok(None);
    };
    Ok(store::memberships::customer_by_external(db, viewer.scope(), org, &viewer.sub).await?)
}

/// What a viewer may do with a record of a customer: a CUSTOMER only with its own (another's is
/// missing), the others by their role.
async fn check_customer_access<C: ConnectionTrait>(
    db: &C,
    viewer: &Viewer,
    owner: Option<Uuid>,
    what: &str,
    action: Action,
    customer_may: bool,
) -> AppResult<()> {
    if viewer.is_customer() {
        let own = own_customer(db, viewer).await?;
        if own.is_none() || own.map(|c| c.id) != owner {
            return Err(AppError::not_found(what));
        }
        return if customer_may {
            Ok(())
        } else {
            Err(AppError::forbidden(
                "a customer may not do this: it needs the OWNER or ADMIN role",
            ))
        };
    }
    require(viewer, action)
}

/// The role check alone, for a record already loaded in the viewer's scope (an Organization's
/// fields, a plan's audit): a customer, or a role the access table does not allow, is FORBIDDEN.
pub fn require(viewer: &Viewer, action: Action) -> AppResult<()> {
    if access::role_allows(viewer, action) {
        Ok(())
    } else {
        Err(access_refusal(action))
    }
}

fn access_refusal(action: Action) -> AppError {
    AppError::forbidden(match action {
        Action::ManageMemberships => "managing memberships needs the OWNER or ADMIN role",
        Action::Book => "bookings are created and moved by the OWNER, ADMIN or SERVICE role",
        _ => "your role may not read the organization's memberships",
    })
}

fn parse_id(what: &str, id: &str) -> AppResult<Uuid> {
    // A malformed id is as missing as a foreign one.
    Uuid::parse_str(id.trim()).map_err(|_| AppError::not_found(what))
}

/// A customer the viewer may read (`action` for others than the customer itself).
pub async fn customer_for<C: ConnectionTrait>(
    db: &C,
    viewer: &Viewer,
    id: &str,
    action: Action,
    customer_may: bool,
) -> AppResult<customer::Model> {
    let id = parse_id("customer", id)?;
    let found = store::memberships::customers_by_ids(db, viewer.scope(), &[id])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| AppError::not_found("customer"))?;
    check_customer_access(db, viewer, Some(found.id), "customer", action, customer_may).await?;
    Ok(found)
}

/// A membership the viewer may read (`action` for others than its customer).
pub async fn membership_for<C: ConnectionTrait>(
    db: &C,
    viewer: &Viewer,
    id: &str,
    action: Action,
    customer_may: bool,
) -> AppResult<membership::Model> {
    let id = parse_id("membership", id)?;
    let found = store::memberships::memberships_by_ids(db, viewer.scope(), &[id])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| AppError::not_found("membership"))?;
    check_customer_access(
        db,
        viewer,
        Some(found.customer_id),
        "membership",
        action,
        customer_may,
    )
    .await?;
    Ok(found)
}

/// The organization a memberships call is about, checked for `action` (a CUSTOMER: its own, when
/// `customer_may`).
pub async fn org_for<C: ConnectionTrait>(
    db: &C,
    viewer: &Viewer,
    id: Option<&str>,
    action: Action,
    customer_may: bool,
) -> AppResult<entity::organization::Model> {
    let org = access::target_org(viewer, id)?;
    if viewer.is_customer() {
        let found = store::orgs::find(db, viewer.scope(), org)
            .await?
            .ok_or_else(|| AppError::not_found("organization"))?;
        return if customer_may {
            Ok(found)
        } else {
            Err(access_refusal(action))
        };
    }
    let found = access::authorize(db, viewer, org, Action::Read).await?;
    if !access::role_allows(viewer, action) {
        return Err(access_refusal(action));
    }
    Ok(found)
}

pub async fn plan_of<C: ConnectionTrait>(
    db: &C,
    m: &membership::Model,
) -> AppResult<membership_plan::Model> {
    store::memberships::plans_by_ids(
        db,
        Scope::Tenant(OrganizationId(m.organization_id)),
        &[m.plan_id],
    )
    .await?
    .into_iter()
    .next()
    .ok_or_else(|| AppError::internal(anyhow::anyhow!("membership {} has no plan", m.id)))
}

// ---- reads ----

/// The usage of cycles of one membership, from its counters (a cycle never touched: its plan's
/// allowance and nothing used).
pub async fn usage_of<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    m: &membership::Model,
    plan: &membership_plan::Model,
    cycles: &[Cycle],
) -> AppResult<Vec<UsageView>> {
    let keys: Vec<(Uuid, i32)> = cycles.iter().map(|c| (m.id, c.index)).collect();
    let rows = store::memberships::usage_rows(db, scope, &keys).await?;
    Ok(cycles
        .iter()
        .map(|c| {
            let row = rows.iter().find(|r| r.cycle == c.index);
            UsageView::from_row(*c, row, plan)
        })
        .collect())
}

/// Makes sure the counters of the cycle containing `at` exist, and answers it (inside a write).
pub(crate) async fn open_cycle<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    m: &membership::Model,
    plan: &membership_plan::Model,
    at: DateTime<Utc>,
) -> AppResult<(Cycle, UsageView)> {
    let cycle = schedule(m, plan, at).cycle_at(at)?;
    let key = CycleKey {
        org: OrganizationId(m.organization_id),
        membership: m.id,
        cycle: cycle.index,
    };
    store::memberships::ensure_cycle(
        db,
        scope,
        key,
        (cycle.start, cycle.end),
        i64::from(plan.services_per_cycle) * ONE,
        &plan.currency,
    )
    .await?;
    let view = usage_of(db, scope, m, plan, &[cycle])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("cycle counters missing")))?;
    Ok((cycle, view))
}

/// Commits a change of memberships and tells their live subscribers (on Postgres by NOTIFY in the
/// transaction, so every replica's subscribers hear it exactly when it commits).
pub(crate) async fn commit_and_publish(
    engine: &Engine,
    txn: crate::store::db::WriteTxn,
    changed: &[(OrganizationId, Uuid)],
) -> AppResult<()> {
    if engine.db.is_postgres() {
        for (org, m) in changed {
            let payload = crate::alerts::encode_membership_changed(*org, *m);
            store::notify(&txn, crate::alerts::CHANNEL, &payload).await?;
        }
        txn.commit().await?;
    } else {
        txn.commit().await?;
        for (org, m) in changed {
            engine
                .bus
                .send(crate::alerts::BusEvent::MembershipChanged(*org, *m));
        }
    }
    Ok(())
}

// ---- recompute ----

fn show(e: &Expected) -> String {
    let d = UsageView::dec;
    format!(
        "used {} credits {} held {} overage {} charges {}",
        d(e.used),
        d(e.credits),
        d(e.held),
        d(e.overage_count),
        d(e.overage_charges)
    )
}

/// Compares an organization's membership counters with the ledger and the bookings' holds, inside
/// recompute's transaction (every membership of the organization locked), and repairs them.
pub(crate) async fn recompute_in<C: ConnectionTrait>(
    db: &C,
    org: OrganizationId,
    repair: bool,
    report: &mut OrgReport,
) -> AppResult<()> {
    let scope = Scope::Platform;
    store::execute(
        db,
        "UPDATE memberships SET updated_at = updated_at WHERE organization_id = $1",
        vec![org.0.into()],
    )
    .await?;
    let mut expected: BTreeMap<(Uuid, i32), Expected> =
        store::memberships::expected_usage(db, scope, org).await?;
    let rows = store::memberships::usage_of_org(db, scope, org).await?;
    for r in &rows {
        expected.entry((r.membership_id, r.cycle)).or_default();
    }
    report.counters += expected.len();
    for ((membership, cycle), want) in &expected {
        let row = rows
            .iter()
            .find(|r| r.membership_id == *membership && r.cycle == *cycle);
        let have = row.map(|r| Expected {
            used: r.used,
            credits: r.credits,
            held: r.held,
            overage_count: r.overage_count,
            overage_charges: r.overage_charges,
        });
        if have.as_ref() == Some(want) {
            continue;
        }
        report.differences.push(Difference {
            org,
            period: Period::of_instant(row.map(|r| r.cycle_start).unwrap_or_else(Utc::now)),
            subject: format!("membership {membership} cycle {cycle}"),
            stored: have
                .as_ref()
                .map(show)
                .unwrap_or_else(|| "no counter".into()),
            expected: show(want),
        });
        if repair && row.is_some() {
            let key = CycleKey {
                org,
                membership: *membership,
                cycle: *cycle,
            };
            store::memberships::set_usage(db, scope, key, want).await?;
        }
    }
    Ok(())
}

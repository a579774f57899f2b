//! Bookings priced with a membership's benefits (the seed's /api/subscriptions/bookings and
//! createBookingAction): quoteBooking prices without writing; createBooking prices under the
//! membership's lock and holds a service at once, so two bookings never take the last one;
//! updateBookingStatus follows the state machine, turning the hold into usage on COMPLETED (a USAGE
//! event in the ledger, with its overage flag and charge, and the overage charge for the outbox)
//! or giving it back on CANCELLED; linkBooking and unlinkBooking are the seed's PUT and DELETE.
//! Everything is idempotent by the booking's reference.

use chrono::{DateTime, Utc};
use entity::enums::UsageEventKind;
use entity::{
    booking, customer, membership, membership_plan, organization, overage_charge, usage_event,
};
use rust_decimal::Decimal;
use sea_orm::ConnectionTrait;
use uuid::Uuid;

use super::cycles::Cycle;
use super::pricing::{self, Benefits, Coverage, Quote, QuoteInput};
use super::{
    BookingStatus, MembershipStatus, SERVICES, UsageView, commit_and_publish, customer_for, now,
    open_cycle, org_for, own_customer, plan_of, schedule, usage_of,
};
use crate::domain::access::Action;
use crate::domain::money::{Currency, DEFAULT_CURRENCY};
use crate::domain::usage::Engine;
use crate::domain::{Amount, OrganizationId, Viewer, optional_text, required_text};
use crate::error::{AppError, AppResult};
use crate::store;
use crate::store::memberships::{CycleKey, ONE, UsageChange};

/// What a quote or a booking is asked with.
#[derive(Debug, Clone)]
pub struct PriceRequest {
    pub organization_id: Option<String>,
    pub customer_id: Option<String>,
    pub service_price: Decimal,
    pub currency: Option<String>,
    pub guest: bool,
    pub apply_benefits: bool,
}

/// A quote, with the membership it was priced with (when the customer holds one).
pub struct Priced {
    pub quote: Quote,
    pub membership: Option<membership::Model>,
    /// The plan and cycle of that membership (the cycle a hold counts in).
    pub plan: Option<membership_plan::Model>,
    pub cycle: Option<Cycle>,
}

/// The customer a booking is for: a CUSTOMER's own (another id is missing), or the one named.
async fn booking_customer<C: ConnectionTrait>(
    db: &C,
    viewer: &Viewer,
    org: &organization::Model,
    customer_id: Option<&str>,
    action: Action,
) -> AppResult<Option<customer::Model>> {
    if viewer.is_customer() {
        let own = own_customer(db, viewer)
            .await?
            .ok_or_else(|| AppError::not_found("customer"))?;
        if let Some(id) = customer_id
            && Uuid::parse_str(id.trim()).ok() != Some(own.id)
        {
            return Err(AppError::not_found("customer"));
        }
        return Ok(Some(own));
    }
    let Some(id) = customer_id else {
        return Ok(None);
    };
    let c = customer_for(db, viewer, id, action, false).await?;
    if c.organization_id != org.id {
        return Err(AppError::not_found("customer"));
    }
    Ok(Some(c))
}

/// Prices one service for `customer` (None: nobody signed in). With `lock`, inside a write: the
/// membership is locked and its cycle's counters opened, so what the quote saw stays true until
/// commit.
async fn price<C: ConnectionTrait>(
    db: &C,
    engine: &Engine,
    viewer: &Viewer,
    org: &organization::Model,
    customer: Option<&customer::Model>,
    req: &PriceRequest,
    lock: bool,
) -> AppResult<Priced> {
    let scope = viewer.scope();
    let at = now(engine);
    let mut membership = None;
    if let (Some(c), false) = (customer, req.guest) {
        let current = store::memberships::memberships_of(db, scope, OrganizationId(org.id), c.id)
            .await?
            .into_iter()
            .find(|m| {
                matches!(
                    MembershipStatus::parse(&m.status),
                    MembershipStatus::Active | MembershipStatus::Paused
                )
            });
        if let Some(m) = current {
            membership = if lock {
                store::memberships::lock_membership(db, scope, m.id).await?
            } else {
                Some(m)
            };
        }
    }
    let mut plan = None;
    let mut cycle = None;
    let mut usage: Option<UsageView> = None;
    if let Some(m) = &membership {
        let p = plan_of(db, m).await?;
        let (c, u) = if lock {
            open_cycle(db, scope, m, &p, at).await?
        } else {
            let c = schedule(m, &p, at).cycle_at(at)?;
            let u = usage_of(db, scope, m, &p, &[c]).await?.into_iter().next();
            let u = u.ok_or_else(|| AppError::internal(anyhow::anyhow!("no usage view")))?;
            (c, u)
        };
        plan = Some(p);
        cycle = Some(c);
        usage = Some(u);
    }
    let currency = Currency::parse(
        req.currency
            .as_deref()
            .or(plan.as_ref().map(|p| p.currency.as_str()))
            .unwrap_or(DEFAULT_CURRENCY),
    )?;
    let active = membership
        .as_ref()
        .is_some_and(|m| MembershipStatus::parse(&m.status) == MembershipStatus::Active);
    let remaining = usage.as_ref().map(|u| UsageView::dec(u.remaining()));
    let benefits = match (&plan, remaining) {
        (Some(p), Some(remaining)) if active && req.apply_benefits => {
            if p.currency != currency.as_str() {
                return Err(AppError::bad_input(format!(
                    "the membership's plan is priced in {}: quote the service in it",
                    p.currency
                )));
            }
            Some(Benefits {
                remaining,
                discount_pct: Amount::from_scaled(p.discount_pct).to_decimal(),
                allow_overage: p.allow_overage,
                overage_rate: p.overage_rate.map(|r| Amount::from_scaled(r).to_decimal()),
            })
        }
        _ => None,
    };
    let quote = pricing::quote(QuoteInput {
        service_price: req.service_price,
        currency,
        guest: req.guest,
        platform_fee_pct: crate::domain::money::fee_pct(db, org.plan_id).await?,
        guest_surcharge_pct: engine.guest_surcharge_pct,
        benefits,
        remaining_without_benefits: remaining,
    })?;
    Ok(Priced {
        quote,
        membership,
        plan,
        cycle,
    })
}

/// quoteBooking: records nothing.
pub async fn quote(engine: &Engine, viewer: &Viewer, req: PriceRequest) -> AppResult<Priced> {
    let db = &engine.db;
    let org = org_for(
        db,
        viewer,
        req.organization_id.as_deref(),
        Action::ReadMemberships,
        true,
    )
    .await?;
    let customer = booking_customer(
        db,
        viewer,
        &org,
        req.customer_id.as_deref(),
        Action::ReadMemberships,
    )
    .await?;
    price(db, engine, viewer, &org, customer.as_ref(), &req, false).await
}

fn scaled(field: &str, d: Decimal) -> AppResult<i64> {
    Ok(Amount::parse(field, d)?.scaled())
}

/// A booking row priced by `p`.
#[allow(clippy::too_many_arguments)]
fn booking_row(
    id: Uuid,
    org: Uuid,
    reference: String,
    customer: Option<Uuid>,
    status: BookingStatus,
    guest: bool,
    p: &Priced,
    at: DateTime<Utc>,
) -> AppResult<booking::Model> {
    let q = &p.quote;
    let linked = q.coverage != Coverage::None;
    Ok(booking::Model {
        id,
        organization_id: org,
        reference,
        customer_id: customer,
        membership_id: p.membership.as_ref().filter(|_| linked).map(|m| m.id),
        status: status.as_str().to_owned(),
        coverage: q.coverage.as_str().to_owned(),
        guest,
        service_price: scaled("servicePrice", q.service_price)?,
        membership_discount: scaled("membershipDiscount", q.membership_discount)?,
        subtotal: scaled("subtotal", q.subtotal)?,
        platform_fee: scaled("platformFee", q.platform_fee)?,
        platform_fee_pct: scaled("platformFeePct", q.platform_fee_pct)?,
        guest_surcharge: scaled("guestSurcharge", q.guest_surcharge)?,
        total: scaled("total", q.total)?,
        provider_payout: scaled("providerPayout", q.provider_payout)?,
        remaining_after: q
            .remaining_after
            .map(|r| scaled("remainingAfter", r))
            .transpose()?,
        currency: q.currency.as_str().to_owned(),
        holds_service: linked && q.coverage.holds(),
        cycle: p.cycle.filter(|_| linked).map(|c| c.index),
        created_at: at,
        updated_at: at,
    })
}

/// The counters a booking's hold counts in: its membership's, in the cycle it was priced in.
pub(crate) fn hold_key(b: &booking::Model) -> Option<CycleKey> {
    Some(CycleKey {
        org: OrganizationId(b.organization_id),
        membership: b.membership_id?,
        cycle: b.cycle?,
    })
}

/// Takes the hold a priced booking needs (the membership is locked).
async fn hold<C: ConnectionTrait>(db: &C, viewer: &Viewer, b: &booking::Model) -> AppResult<()> {
    let (Some(key), true) = (hold_key(b), b.holds_service) else {
        return Ok(());
    };
    let change = if Coverage::parse(&b.coverage) == Coverage::Included {
        UsageChange::HoldIncluded
    } else {
        UsageChange::HoldOverage
    };
    store::memberships::change_usage(db, viewer.scope(), key, change)
        .await?
        .map(|_| ())
        .ok_or_else(|| {
            AppError::conflict("the membership's last service was just taken: try again")
        })
}

/// Gives a booking's hold back (the membership is locked); the caller saves the booking.
pub(crate) async fn release<C: ConnectionTrait>(
    db: &C,
    viewer: &Viewer,
    b: &mut booking::Model,
) -> AppResult<()> {
    if let (Some(key), true) = (hold_key(b), b.holds_service) {
        store::memberships::change_usage(db, viewer.scope(), key, UsageChange::Release).await?;
    }
    b.holds_service = false;
    Ok(())
}

/// The same booking asked again: the stored one when the details agree, else CONFLICT.
fn replay(
    existing: booking::Model,
    customer: Option<Uuid>,
    req: &PriceRequest,
) -> AppResult<booking::Model> {
    let same_price = Amount::parse("servicePrice", req.service_price)
        .is_ok_and(|p| p.scaled() == existing.service_price);
    let same_currency = req
        .currency
        .as_deref()
        .is_none_or(|c| c.trim().eq_ignore_ascii_case(&existing.currency));
    if existing.customer_id == customer
        && same_price
        && same_currency
        && existing.guest == req.guest
    {
        Ok(existing)
    } else {
        Err(AppError::conflict(format!(
            "booking {} exists with other details",
            crate::error::quote(&existing.reference)
        )))
    }
}

/// createBooking: SERVICE, OWNER/ADMIN, or the customer itself.
pub async fn create(
    engine: &Engine,
    viewer: &Viewer,
    reference: &str,
    req: PriceRequest,
) -> AppResult<booking::Model> {
    let org = org_for(
        &engine.db,
        viewer,
        req.organization_id.as_deref(),
        Action::Book,
        true,
    )
    .await?;
    let reference = required_text("reference", reference, 255)?;
    let customer = booking_customer(
        &engine.db,
        viewer,
        &org,
        req.customer_id.as_deref(),
        Action::Book,
    )
    .await?;
    let customer_id = customer.as_ref().map(|c| c.id);
    let scope = viewer.scope();
    let txn = engine.db.begin_write().await?;
    if let Some(existing) = store::memberships::booking_by_reference(
        &*txn,
        scope,
        OrganizationId(org.id),
        &reference,
        true,
    )
    .await?
    {
        txn.rollback().await?;
        return replay(existing, customer_id, &req);
    }
    let priced = price(&*txn, engine, viewer, &org, customer.as_ref(), &req, true).await?;
    let at = now(engine);
    let row = booking_row(
        Uuid::now_v7(),
        org.id,
        reference.clone(),
        customer_id,
        BookingStatus::Initiated,
        req.guest,
        &priced,
        at,
    )?;
    if !store::memberships::insert_booking(&*txn, scope, row.clone()).await? {
        // The same reference committed meanwhile.
        txn.rollback().await?;
        let existing = store::memberships::booking_by_reference(
            &engine.db,
            scope,
            OrganizationId(org.id),
            &reference,
            false,
        )
        .await?
        .ok_or_else(|| AppError::conflict("the booking is being created: try again"))?;
        return replay(existing, customer_id, &req);
    }
    hold(&*txn, viewer, &row).await?;
    let changed: Vec<_> = row
        .membership_id
        .map(|m| (OrganizationId(org.id), m))
        .into_iter()
        .collect();
    commit_and_publish(engine, txn, &changed).await?;
    Ok(row)
}

/// Turns a booking's hold into usage: the ledger's USAGE event (overage flag and charge) and, for
/// an overage billed through the membership's Stripe subscription, the outbox's charge.
async fn use_hold<C: ConnectionTrait>(
    db: &C,
    viewer: &Viewer,
    b: &booking::Model,
    m: &membership::Model,
    plan: &membership_plan::Model,
    reason: Option<String>,
    at: DateTime<Utc>,
) -> AppResult<()> {
    let scope = viewer.scope();
    let cycle_index = b.cycle.unwrap_or(0);
    let overage = Coverage::parse(&b.coverage) == Coverage::Overage;
    let charge = if overage { b.subtotal } else { 0 };
    let key = hold_key(b)
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("booking {} held nothing", b.id)))?;
    store::memberships::change_usage(db, scope, key, UsageChange::UseHold { overage, charge })
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("booking {} held nothing", b.id)))?;
    let cycle = schedule(m, plan, at).cycle(i64::from(cycle_index))?;
    store::memberships::insert_event(
        db,
        scope,
        usage_event::Model {
            organization_id: b.organization_id,
            id: Uuid::now_v7(),
            metric_code: SERVICES.to_owned(),
            kind: UsageEventKind::Usage,
            quantity: ONE,
            period_start: cycle.start.date_naive(),
            idempotency_key: None,
            reference: Some(b.reference.clone()),
            reason,
            actor: Some(viewer.sub.clone()),
            reverses_event_id: None,
            membership_id: Some(m.id),
            cycle: Some(cycle_index),
            overage,
            charge,
            occurred_at: at,
            recorded_at: Utc::now(),
        },
    )
    .await?;
    if overage && charge > 0 && m.stripe_subscription_id.is_some() {
        let owed = crate::domain::overage::Owed {
            org: OrganizationId(b.organization_id),
            metric: SERVICES.to_owned(),
            quantity: ONE,
            unit_price: charge,
            amount: charge,
            currency: b.currency.clone(),
        };
        let note = format!(
            "billed: 1 service over the allowance, booking {}",
            b.reference
        );
        let row = overage_charge::Model {
            membership_id: Some(m.id),
            booking_id: Some(b.id),
            ..owed.charge(cycle.start.date_naive(), note)
        };
        store::overage::insert_once(db, scope, row).await?;
    }
    Ok(())
}

/// updateBookingStatus: SERVICE or OWNER/ADMIN.
pub async fn update_status(
    engine: &Engine,
    viewer: &Viewer,
    org_id: Option<&str>,
    reference: &str,
    to: BookingStatus,
    reason: Option<&str>,
) -> AppResult<booking::Model> {
    let org = org_for(&engine.db, viewer, org_id, Action::Book, true).await?;
    let reason = optional_text("reason", reason, 1000)?;
    let scope = viewer.scope();
    let own = own_customer(&engine.db, viewer).await?;
    let txn = engine.db.begin_write().await?;
    let mut b = store::memberships::booking_by_reference(
        &*txn,
        scope,
        OrganizationId(org.id),
        reference.trim(),
        true,
    )
    .await?
    .ok_or_else(|| AppError::not_found("booking"))?;
    if viewer.is_customer() {
        txn.rollback().await?;
        return Err(if own.is_some_and(|c| Some(c.id) == b.customer_id) {
            AppError::forbidden("bookings are moved by the OWNER, ADMIN or SERVICE role")
        } else {
            AppError::not_found("booking")
        });
    }
    let from = BookingStatus::parse(&b.status);
    if from == to {
        txn.rollback().await?;
        return Ok(b);
    }
    if !from.may_become(to) {
        txn.rollback().await?;
        return Err(AppError::conflict(format!(
            "a booking in state {} cannot become {}",
            from.as_str(),
            to.as_str()
        )));
    }
    let at = now(engine);
    let mut changed = Vec::new();
    if let (Some(mid), true) = (b.membership_id, b.holds_service)
        && matches!(to, BookingStatus::Completed | BookingStatus::Cancelled)
    {
        let m = store::memberships::lock_membership(&*txn, scope, mid)
            .await?
            .ok_or_else(|| AppError::not_found("membership"))?;
        if to == BookingStatus::Completed {
            let plan = plan_of(&*txn, &m).await?;
            use_hold(&*txn, viewer, &b, &m, &plan, reason, at).await?;
            b.holds_service = false;
        } else {
            release(&*txn, viewer, &mut b).await?;
        }
        changed.push((OrganizationId(org.id), mid));
    }
    b.status = to.as_str().to_owned();
    b.updated_at = at;
    store::memberships::save_booking(&*txn, scope, &b).await?;
    commit_and_publish(engine, txn, &changed).await?;
    Ok(b)
}

pub struct LinkRequest {
    pub organization_id: Option<String>,
    pub reference: String,
    pub customer_id: String,
    pub service_price: Decimal,
    pub currency: Option<String>,
    pub status: Option<BookingStatus>,
}

/// linkBooking: OWNER/ADMIN. Links the booking (created when missing) to the customer's ACTIVE
/// membership, priced and held as createBooking would; a booking already COMPLETED uses its
/// service at once.
pub async fn link(
    engine: &Engine,
    viewer: &Viewer,
    input: LinkRequest,
) -> AppResult<booking::Model> {
    // A customer's own records first: another's is missing, its own FORBIDDEN.
    let org = org_for(
        &engine.db,
        viewer,
        input.organization_id.as_deref(),
        Action::ManageMemberships,
        true,
    )
    .await?;
    let reference = required_text("reference", &input.reference, 255)?;
    let c = customer_for(
        &engine.db,
        viewer,
        &input.customer_id,
        Action::ManageMemberships,
        false,
    )
    .await?;
    if c.organization_id != org.id {
        return Err(AppError::not_found("customer"));
    }
    if input.status == Some(BookingStatus::Cancelled) {
        return Err(AppError::conflict("a cancelled booking cannot be linked"));
    }
    let scope = viewer.scope();
    let req = PriceRequest {
        organization_id: None,
        customer_id: None,
        service_price: input.service_price,
        currency: input.currency.clone(),
        guest: false,
        apply_benefits: true,
    };
    let txn = engine.db.begin_write().await?;
    let existing = store::memberships::booking_by_reference(
        &*txn,
        scope,
        OrganizationId(org.id),
        &reference,
        true,
    )
    .await?;
    if let Some(e) = &existing {
        if e.membership_id.is_some() {
            txn.rollback().await?;
            return if e.customer_id == Some(c.id) {
                Ok(e.clone())
            } else {
                Err(AppError::conflict(
                    "the booking is linked to another customer's membership",
                ))
            };
        }
        if e.customer_id.is_some_and(|x| x != c.id) {
            txn.rollback().await?;
            return Err(AppError::conflict(
                "the booking belongs to another customer",
            ));
        }
        if matches!(BookingStatus::parse(&e.status), BookingStatus::Cancelled) {
            txn.rollback().await?;
            return Err(AppError::conflict("a cancelled booking cannot be linked"));
        }
    }
    let priced = price(&*txn, engine, viewer, &org, Some(&c), &req, true).await?;
    if priced.quote.coverage == Coverage::None {
        txn.rollback().await?;
        return Err(AppError::conflict(
            "the customer has no ACTIVE membership to link the booking to",
        ));
    }
    let at = now(engine);
    let from = existing
        .as_ref()
        .map(|e| BookingStatus::parse(&e.status))
        .unwrap_or(BookingStatus::Initiated);
    let status = match input.status {
        Some(s) if s == from || from.may_become(s) => s,
        Some(s) => {
            txn.rollback().await?;
            return Err(AppError::conflict(format!(
                "a booking in state {} cannot become {}",
                from.as_str(),
                s.as_str()
            )));
        }
        None => from,
    };
    let mut row = booking_row(
        existing.as_ref().map(|e| e.id).unwrap_or_else(Uuid::now_v7),
        org.id,
        reference,
        Some(c.id),
        status,
        false,
        &priced,
        at,
    )?;
    if let Some(e) = &existing {
        row.created_at = e.created_at;
        store::memberships::save_booking(&*txn, scope, &row).await?;
    } else if !store::memberships::insert_booking(&*txn, scope, row.clone()).await? {
        txn.rollback().await?;
        return Err(AppError::conflict(
            "the booking is being created: try again",
        ));
    }
    hold(&*txn, viewer, &row).await?;
    if status == BookingStatus::Completed && row.holds_service {
        let (Some(m), Some(plan)) = (&priced.membership, &priced.plan) else {
            return Err(AppError::internal(anyhow::anyhow!(
                "linked without a membership"
            )));
        };
        use_hold(&*txn, viewer, &row, m, plan, None, at).await?;
        row.holds_service = false;
        store::memberships::save_booking(&*txn, scope, &row).await?;
    }
    let changed: Vec<_> = row
        .membership_id
        .map(|m| (OrganizationId(org.id), m))
        .into_iter()
        .collect();
    commit_and_publish(engine, txn, &changed).await?;
    Ok(row)
}

/// unlinkBooking: OWNER/ADMIN. The hold is given back and the booking is priced in full.
pub async fn unlink(
    engine: &Engine,
    viewer: &Viewer,
    org_id: Option<&str>,
    reference: &str,
) -> AppResult<booking::Model> {
    let org = org_for(&engine.db, viewer, org_id, Action::ManageMemberships, true).await?;
    let scope = viewer.scope();
    if viewer.is_customer() {
        // Its own booking is FORBIDDEN, another's missing.
        let own = own_customer(&engine.db, viewer).await?;
        let b = store::memberships::booking_by_reference(
            &engine.db,
            scope,
            OrganizationId(org.id),
            reference.trim(),
            false,
        )
        .await?;
        return Err(match (own, b) {
            (Some(c), Some(b)) if b.customer_id == Some(c.id) => {
                AppError::forbidden("unlinking a booking needs the OWNER or ADMIN role")
            }
            _ => AppError::not_found("booking"),
        });
    }
    let txn = engine.db.begin_write().await?;
    let mut b = store::memberships::booking_by_reference(
        &*txn,
        scope,
        OrganizationId(org.id),
        reference.trim(),
        true,
    )
    .await?
    .ok_or_else(|| AppError::not_found("booking"))?;
    let Some(mid) = b.membership_id else {
        txn.rollback().await?;
        return Ok(b);
    };
    if BookingStatus::parse(&b.status) == BookingStatus::Completed {
        txn.rollback().await?;
        return Err(AppError::conflict(
            "a COMPLETED booking has used its service: it cannot be unlinked",
        ));
    }
    store::memberships::lock_membership(&*txn, scope, mid).await?;
    b = detach(&*txn, engine, viewer, b).await?;
    commit_and_publish(engine, txn, &[(OrganizationId(org.id), mid)]).await?;
    Ok(b)
}

/// A booking taken off its membership (unlinked, or its membership cancelled): its hold given back,
/// priced in full (NONE) with the fee it was priced with, saved. The membership is locked.
pub(crate) async fn detach<C: ConnectionTrait>(
    db: &C,
    engine: &Engine,
    viewer: &Viewer,
    mut b: booking::Model,
) -> AppResult<booking::Model> {
    let scope = viewer.scope();
    release(db, viewer, &mut b).await?;
    let q = pricing::quote(QuoteInput {
        service_price: Amount::from_scaled(b.service_price).to_decimal(),
        currency: Currency::parse(&b.currency)?,
        guest: b.guest,
        platform_fee_pct: Amount::from_scaled(b.platform_fee_pct).to_decimal(),
        guest_surcharge_pct: engine.guest_surcharge_pct,
        benefits: None,
        remaining_without_benefits: None,
    })?;
    let priced = Priced {
        quote: q,
        membership: None,
        plan: None,
        cycle: None,
    };
    let mut row = booking_row(
        b.id,
        b.organization_id,
        b.reference.clone(),
        b.customer_id,
        BookingStatus::parse(&b.status),
        b.guest,
        &priced,
        now(engine),
    )?;
    row.created_at = b.created_at;
    store::memberships::save_booking(db, scope, &row).await?;
    Ok(row)
}

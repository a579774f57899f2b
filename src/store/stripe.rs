//! Stripe webhook events applied once, in the order Stripe made them per object (platform data).

use chrono::Utc;

use super::execute;
use sea_orm::{ConnectionTrait, DbErr};

/// Claims an event id inside the transaction of its effects: false when it was already received
/// (a replay; a concurrent replay waits for the first one's commit and then finds it).
pub async fn claim_event<C: ConnectionTrait>(
    db: &C,
    id: &str,
    kind: &str,
    object_id: Option<&str>,
    created: i64,
    organization: Option<uuid::Uuid>,
    outcome: &str,
) -> Result<bool, DbErr> {
    let n = execute(
        db,
        "INSERT INTO stripe_events (id, type, object_id, created, organization_id, outcome, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        vec![
            id.into(),
            kind.into(),
            object_id.map(str::to_owned).into(),
            created.into(),
            organization.into(),
            outcome.into(),
            Utc::now().into(),
        ],
    )
    .await?;
    Ok(n == 1)
}

/// Whether an event made at `created` about `object_id` is not older than the newest applied to
/// it; when so, records it as the newest (in the caller's transaction). One statement, so two
/// deliveries racing on Postgres cannot both pass: the second waits for the first's row lock and
/// its condition is checked against what the first committed.
pub async fn advance_object<C: ConnectionTrait>(
    db: &C,
    object_id: &str,
    created: i64,
    event_id: &str,
) -> Result<bool, DbErr> {
    let n = execute(
        db,
        "INSERT INTO stripe_objects (object_id, last_created, last_event_id) VALUES ($1, $2, $3) \
         ON CONFLICT (object_id) DO UPDATE SET last_created = excluded.last_created, \
         last_event_id = excluded.last_event_id \
         WHERE stripe_objects.last_created <= excluded.last_created",
        vec![object_id.into(), created.into(), event_id.into()],
    )
    .await?;
    Ok(n == 1)
}

/// Records what became of a claimed event.
pub async fn set_outcome<C: ConnectionTrait>(
    db: &C,
    id: &str,
    outcome: &str,
    organization: Option<uuid::Uuid>,
) -> Result<(), DbErr> {
    execute(
        db,
        "UPDATE stripe_events SET outcome = $1, organization_id = $2 WHERE id = $3",
        vec![outcome.into(), organization.into(), id.into()],
    )
    .await
    .map(|_| ())
}

/// Records the amount an invoice event says was paid (scaled by 10^4).
pub async fn set_amount_paid<C: ConnectionTrait>(
    db: &C,
    id: &str,
    amount: i64,
    currency: &str,
) -> Result<(), DbErr> {
    execute(
        db,
        "UPDATE stripe_events SET amount_paid = $1, currency = $2 WHERE id = $3",
        vec![amount.into(), currency.into(), id.into()],
    )
    .await
    .map(|_| ())
}

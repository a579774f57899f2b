//! Organizations' Stripe Connect accounts, scoped like every tenant table.

use entity::connect_account;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};

use crate::domain::{OrganizationId, Scope};

pub async fn by_org<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
) -> Result<Option<connect_account::Model>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    connect_account::Entity::find_by_id(org.0).one(db).await
}

/// The account with this Stripe id (the platform's view: a webhook names the account).
pub async fn by_stripe_account<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    account: &str,
) -> Result<Option<connect_account::Model>, DbErr> {
    let found = connect_account::Entity::find()
        .filter(connect_account::Column::StripeAccountId.eq(account))
        .one(db)
        .await?;
    Ok(found.filter(|a| scope.allows(OrganizationId(a.organization_id))))
}

/// Stores what Stripe said of an organization's account.
pub async fn upsert<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    row: &connect_account::Model,
) -> Result<(), DbErr> {
    if !scope.allows(OrganizationId(row.organization_id)) {
        return Err(DbErr::RecordNotInserted);
    }
    let active: connect_account::ActiveModel = row.clone().into();
    connect_account::Entity::insert(active)
        .on_conflict(
            OnConflict::column(connect_account::Column::OrganizationId)
                .update_columns([
                    connect_account::Column::StripeAccountId,
                    connect_account::Column::ChargesEnabled,
                    connect_account::Column::PayoutsEnabled,
                    connect_account::Column::DetailsSubmitted,
                    connect_account::Column::Disabled,
                    connect_account::Column::RequirementsDue,
                    connect_account::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await
        .map(|_| ())
}

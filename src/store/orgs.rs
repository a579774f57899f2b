//! Organizations (the tenants). Every function takes the caller's scope.

use chrono::{DateTime, Utc};
use entity::{enums::OrganizationStatus, organization};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, sea_query::Expr,
};
use uuid::Uuid;

use crate::domain::{OrganizationId, Scope};

fn scope_condition(scope: Scope) -> Condition {
    match scope {
        Scope::Platform => Condition::all(),
        Scope::Tenant(org) => Condition::all().add(organization::Column::Id.eq(org.0)),
    }
}

/// One organization, if it exists and the scope may see it. A foreign id and a missing one look alike.
pub async fn find<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    id: OrganizationId,
) -> Result<Option<organization::Model>, DbErr> {
    organization::Entity::find_by_id(id.0)
        .filter(scope_condition(scope))
        .one(db)
        .await
}

pub async fn by_ids<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    ids: &[OrganizationId],
) -> Result<Vec<organization::Model>, DbErr> {
    organization::Entity::find()
        .filter(scope_condition(scope))
        .filter(organization::Column::Id.is_in(ids.iter().map(|i| i.0)))
        .all(db)
        .await
}

#[derive(Debug, Clone, Default)]
pub struct OrgFilter {
    pub status: Option<OrganizationStatus>,
    pub search: Option<String>,
}

fn filter_condition(scope: Scope, f: &OrgFilter) -> Condition {
    let mut cond = scope_condition(scope);
    if let Some(status) = f.status {
        cond = cond.add(organization::Column::Status.eq(status));
    }
    if let Some(search) = f.search.as_deref().filter(|s| !s.is_empty()) {
        cond = cond.add(
            Condition::any()
                .add(super::contains_ci(organization::Column::Name, search))
                .add(super::contains_ci(organization::Column::Slug, search)),
        );
    }
    cond
}

/// A page ordered by slug, after the slug `after`; `limit + 1` rows are fetched by the caller's choice.
pub async fn page<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    f: &OrgFilter,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<organization::Model>, DbErr> {
    let mut q = organization::Entity::find().filter(filter_condition(scope, f));
    if let Some(after) = after {
        q = q.filter(organization::Column::Slug.gt(after));
    }
    q.order_by_asc(organization::Column::Slug)
        .limit(limit)
        .all(db)
        .await
}

pub async fn count<C: ConnectionTrait>(db: &C, scope: Scope, f: &OrgFilter) -> Result<u64, DbErr> {
    organization::Entity::find()
        .filter(filter_condition(scope, f))
        .count(db)
        .await
}

pub struct NewOrganization {
    pub name: String,
    pub slug: String,
    pub status: OrganizationStatus,
    pub plan_id: Option<Uuid>,
    pub trial_ends_at: Option<DateTime<Utc>>,
}

/// Inserts an organization. Only the platform team creates tenants; a tenant scope writes nothing.
pub async fn insert<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    new: NewOrganization,
) -> Result<Option<organization::Model>, DbErr> {
    if scope != Scope::Platform {
        return Ok(None);
    }
    let now = Utc::now();
    let row = organization::ActiveModel {
        id: Set(Uuid::new_v4()),
        name: Set(new.name),
        slug: Set(new.slug),
        status: Set(new.status),
        plan_id: Set(new.plan_id),
        trial_ends_at: Set(new.trial_ends_at),
        stripe_customer_id: Set(None),
        stripe_subscription_id: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    organization::Entity::insert(row)
        .exec_with_returning(db)
        .await
        .map(Some)
}

/// Sets the subscription fields of an organization the scope may touch; answers whether it did.
pub async fn update_subscription<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    id: OrganizationId,
    status: OrganizationStatus,
    plan_id: Option<Uuid>,
    trial_ends_at: Option<DateTime<Utc>>,
) -> Result<bool, DbErr> {
    let res = organization::Entity::update_many()
        .col_expr(organization::Column::Status, Expr::value(status))
        .col_expr(organization::Column::PlanId, Expr::value(plan_id))
        .col_expr(
            organization::Column::TrialEndsAt,
            Expr::value(trial_ends_at),
        )
        .col_expr(organization::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(scope_condition(scope))
        .filter(organization::Column::Id.eq(id.0))
        .exec(db)
        .await?;
    Ok(res.rows_affected > 0)
}

/// Ids of organizations in the given statuses, for the daily recompute.
pub async fn ids_with_status<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    statuses: &[OrganizationStatus],
) -> Result<Vec<OrganizationId>, DbErr> {
    let rows = organization::Entity::find()
        .filter(scope_condition(scope))
        .filter(organization::Column::Status.is_in(statuses.iter().copied()))
        .order_by_asc(organization::Column::Slug)
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|o| OrganizationId(o.id)).collect())
}

/// The organization whose Stripe customer this is, if the scope may see it.
pub async fn by_stripe_customer<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    customer: &str,
) -> Result<Option<organization::Model>, DbErr> {
    organization::Entity::find()
        .filter(scope_condition(scope))
        .filter(organization::Column::StripeCustomerId.eq(customer))
        .one(db)
        .await
}

/// Records the organization's Stripe customer and subscription ids.
pub async fn set_stripe_ids<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    id: OrganizationId,
    customer: Option<&str>,
    subscription: Option<&str>,
) -> Result<(), DbErr> {
    organization::Entity::update_many()
        .col_expr(
            organization::Column::StripeCustomerId,
            Expr::value(customer.map(str::to_owned)),
        )
        .col_expr(
            organization::Column::StripeSubscriptionId,
            Expr::value(subscription.map(str::to_owned)),
        )
        .col_expr(organization::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(scope_condition(scope))
        .filter(organization::Column::Id.eq(id.0))
        .exec(db)
        .await
        .map(|_| ())
}

/// Sets only the organization's status (a payment failed or succeeded).
pub async fn set_status<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    id: OrganizationId,
    status: OrganizationStatus,
) -> Result<(), DbErr> {
    organization::Entity::update_many()
        .col_expr(organization::Column::Status, Expr::value(status))
        .col_expr(organization::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(scope_condition(scope))
        .filter(organization::Column::Id.eq(id.0))
        .exec(db)
        .await
        .map(|_| ())
}

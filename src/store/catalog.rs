//! The catalogue: metrics, plans and their limits. Not tenant data: every caller may read it.

use chrono::Utc;
use entity::{enums::Enforcement, metric, plan, plan_history, plan_limit};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    sea_query::OnConflict,
};
use uuid::Uuid;

pub async fn metrics<C: ConnectionTrait>(db: &C) -> Result<Vec<metric::Model>, DbErr> {
    metric::Entity::find()
        .order_by_asc(metric::Column::Code)
        .all(db)
        .await
}

pub async fn plans<C: ConnectionTrait>(
    db: &C,
    include_inactive: bool,
) -> Result<Vec<plan::Model>, DbErr> {
    let mut q = plan::Entity::find()
        .order_by_asc(plan::Column::Rank)
        .order_by_asc(plan::Column::Code);
    if !include_inactive {
        q = q.filter(plan::Column::Active.eq(true));
    }
    q.all(db).await
}

pub async fn plans_by_ids<C: ConnectionTrait>(
    db: &C,
    ids: &[Uuid],
) -> Result<Vec<plan::Model>, DbErr> {
    plan::Entity::find()
        .filter(plan::Column::Id.is_in(ids.iter().copied()))
        .all(db)
        .await
}

pub async fn plan_by_code<C: ConnectionTrait>(
    db: &C,
    code: &str,
) -> Result<Option<plan::Model>, DbErr> {
    plan::Entity::find()
        .filter(plan::Column::Code.eq(code))
        .one(db)
        .await
}

pub async fn plan_by_id<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
) -> Result<Option<plan::Model>, DbErr> {
    plan::Entity::find_by_id(id).one(db).await
}

pub async fn limits_for_plans<C: ConnectionTrait>(
    db: &C,
    plan_ids: &[Uuid],
) -> Result<Vec<plan_limit::Model>, DbErr> {
    plan_limit::Entity::find()
        .filter(plan_limit::Column::PlanId.is_in(plan_ids.iter().copied()))
        .order_by_asc(plan_limit::Column::MetricCode)
        .all(db)
        .await
}

pub struct NewLimit {
    pub metric_code: String,
    pub included: Option<i64>,
    pub enforcement: Enforcement,
    pub overage_unit_price: Option<i64>,
}

pub struct PlanFields {
    pub code: String,
    pub name: String,
    pub rank: i32,
    pub price_monthly: i64,
    pub currency: String,
    pub trial_days: i32,
    pub application_fee_pct: i64,
    pub active: bool,
    pub stripe_price_id: Option<String>,
}

/// Creates or updates a plan by code and replaces its limits. Runs inside the caller's transaction.
pub async fn upsert_plan<C: ConnectionTrait>(
    db: &C,
    f: PlanFields,
    limits: Vec<NewLimit>,
) -> Result<Uuid, DbErr> {
    let now = Utc::now();
    let existing = plan_by_code(db, &f.code).await?;
    let id = existing.as_ref().map(|p| p.id).unwrap_or_else(Uuid::new_v4);
    let row = plan::ActiveModel {
        id: Set(id),
        code: Set(f.code),
        name: Set(f.name),
        rank: Set(f.rank),
        price_monthly: Set(f.price_monthly),
        currency: Set(f.currency),
        trial_days: Set(f.trial_days),
        application_fee_pct: Set(f.application_fee_pct),
        active: Set(f.active),
        stripe_price_id: Set(f.stripe_price_id),
        created_at: Set(existing.as_ref().map(|p| p.created_at).unwrap_or(now)),
        updated_at: Set(now),
    };
    plan::Entity::insert(row)
        .on_conflict(
            OnConflict::column(plan::Column::Id)
                .update_columns([
                    plan::Column::Name,
                    plan::Column::Rank,
                    plan::Column::PriceMonthly,
                    plan::Column::Currency,
                    plan::Column::TrialDays,
                    plan::Column::ApplicationFeePct,
                    plan::Column::Active,
                    plan::Column::StripePriceId,
                    plan::Column::UpdatedAt,
                ])
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    plan_limit::Entity::delete_many()
        .filter(plan_limit::Column::PlanId.eq(id))
        .exec(db)
        .await?;
    if !limits.is_empty() {
        plan_limit::Entity::insert_many(limits.into_iter().map(|l| plan_limit::ActiveModel {
            plan_id: Set(id),
            metric_code: Set(l.metric_code),
            included: Set(l.included),
            enforcement: Set(l.enforcement),
            overage_unit_price: Set(l.overage_unit_price),
        }))
        .exec_without_returning(db)
        .await?;
    }
    Ok(id)
}

/// Appends a plan's audit row. Runs inside the caller's transaction.
pub async fn insert_plan_history<C: ConnectionTrait>(
    db: &C,
    row: plan_history::Model,
) -> Result<(), DbErr> {
    let row: plan_history::ActiveModel = row.into();
    plan_history::Entity::insert(row)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// A plan's audit rows, newest first.
pub async fn plan_history<C: ConnectionTrait>(
    db: &C,
    plan_id: Uuid,
) -> Result<Vec<plan_history::Model>, DbErr> {
    plan_history::Entity::find()
        .filter(plan_history::Column::PlanId.eq(plan_id))
        .order_by_desc(plan_history::Column::CreatedAt)
        .order_by_desc(plan_history::Column::Id)
        .all(db)
        .await
}

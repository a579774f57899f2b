use sea_orm::entity::prelude::*;

/// An organization's membership plan (seed 002). Amounts and percents scaled by 10^4; `interval` is
/// WEEK, MONTH or YEAR.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "membership_plans")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Uuid,
    pub code: String,
    pub name: String,
    pub price: i64,
    pub currency: String,
    pub interval: String,
    pub services_per_cycle: i32,
    pub discount_pct: i64,
    pub allow_overage: bool,
    pub overage_rate: Option<i64>,
    pub active: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

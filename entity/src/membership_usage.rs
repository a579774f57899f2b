use sea_orm::entity::prelude::*;

/// The seed's subscription_usage_summaries: a membership's counters in one cycle (numbered from 0),
/// a projection of the ledger like usage_counters. Quantities and money scaled by 10^4.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "membership_usage")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub organization_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub membership_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub cycle: i32,
    pub cycle_start: DateTimeUtc,
    pub cycle_end: DateTimeUtc,
    pub included_services: i64,
    pub credits: i64,
    pub used: i64,
    pub held: i64,
    pub overage_count: i64,
    pub overage_charges: i64,
    pub currency: String,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

#[allow(unused_imports)]
use crate::enums::*;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub organization_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub metric_code: String,
    pub kind: UsageEventKind,
    pub quantity: i64,
    pub period_start: Date,
    pub idempotency_key: Option<String>,
    pub reference: Option<String>,
    pub reason: Option<String>,
    pub actor: Option<String>,
    pub reverses_event_id: Option<Uuid>,
    /// A membership's event (seed 002): the membership and its cycle; None for the organization's own.
    pub membership_id: Option<Uuid>,
    pub cycle: Option<i32>,
    /// A service past the membership's allowance, and what it costs (scaled by 10^4).
    pub overage: bool,
    pub charge: i64,
    pub occurred_at: DateTimeUtc,
    pub recorded_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

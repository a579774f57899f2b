use sea_orm::entity::prelude::*;

/// A refund of a payment, counted in the period it was made. Amounts are scaled by 10^4.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "payment_refunds")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Uuid,
    pub payment_id: Uuid,
    #[sea_orm(unique)]
    pub stripe_refund_id: String,
    pub amount: i64,
    pub occurred_at: DateTimeUtc,
    /// The calendar period (UTC month) the row counts in.
    pub period_start: Date,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

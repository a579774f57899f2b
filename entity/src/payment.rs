use sea_orm::entity::prelude::*;

/// A payment an organization received (one per Stripe PaymentIntent), with the platform's fee.
/// Amounts are scaled by 10^4.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "payments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Uuid,
    #[sea_orm(unique)]
    pub stripe_payment_intent_id: String,
    pub amount: i64,
    pub currency: String,
    pub application_fee: i64,
    pub application_fee_pct: i64,
    pub net_amount: i64,
    pub refunded_amount: i64,
    pub reference: Option<String>,
    pub occurred_at: DateTimeUtc,
    /// The calendar period (UTC month) the row counts in.
    pub period_start: Date,
    pub created_at: DateTimeUtc,
    pub created_by: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

use sea_orm::entity::prelude::*;

/// A booking of the platform (by its reference), priced when it was created or linked. Amounts scaled
/// by 10^4; `holds_service` while it holds one of its membership's services in `cycle`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "bookings")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Uuid,
    pub reference: String,
    pub customer_id: Option<Uuid>,
    pub membership_id: Option<Uuid>,
    pub status: String,
    pub coverage: String,
    pub guest: bool,
    pub service_price: i64,
    pub membership_discount: i64,
    pub subtotal: i64,
    pub platform_fee: i64,
    pub platform_fee_pct: i64,
    pub guest_surcharge: i64,
    pub total: i64,
    pub provider_payout: i64,
    pub remaining_after: Option<i64>,
    pub currency: String,
    pub holds_service: bool,
    pub cycle: Option<i32>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

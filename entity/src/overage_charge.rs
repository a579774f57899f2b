use sea_orm::entity::prelude::*;

/// One organization's OVERAGE units of a period and metric, billed through Stripe once. Amounts
/// are scaled by 10^4; `status` is PENDING, SENT, FAILED or VOID.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "overage_charges")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Uuid,
    pub metric_code: String,
    pub period_start: Date,
    pub quantity: i64,
    pub unit_price: i64,
    pub amount: i64,
    pub currency: String,
    pub status: String,
    pub stripe_id: Option<String>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTimeUtc,
    pub claimed_by: Option<Uuid>,
    pub claimed_until: Option<DateTimeUtc>,
    pub sent_at: Option<DateTimeUtc>,
    /// The calendar period Stripe accepted it in (platformRevenue's overageBilled).
    pub sent_period: Option<Date>,
    /// What happened to it, oldest first, as a JSON array of strings.
    pub history: String,
    /// A membership's overage (one charge per completed booking), billed on the connected account.
    pub membership_id: Option<Uuid>,
    pub booking_id: Option<Uuid>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

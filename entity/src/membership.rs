use sea_orm::entity::prelude::*;

/// A customer's membership. `status` is ACTIVE, PAUSED, CANCELLED or PAST_DUE; `pauses` (JSON: [[start, end], ..] in Unix seconds) are
/// the pauses that ended, each pushing the cycle boundaries after it; `paused_at` starts the current one.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "memberships")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Uuid,
    pub customer_id: Uuid,
    pub plan_id: Uuid,
    pub status: String,
    pub started_at: DateTimeUtc,
    pub paused_at: Option<DateTimeUtc>,
    pub pauses: String,
    pub cancelled_at: Option<DateTimeUtc>,
    pub stripe_subscription_id: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

#[allow(unused_imports)]
use crate::enums::*;
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "subscription_history")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub organization_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub old_plan_id: Option<Uuid>,
    pub new_plan_id: Option<Uuid>,
    pub change_type: ChangeType,
    pub stripe_event_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub amount_paid: Option<i64>,
    pub effective_date: Date,
    pub reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub created_by: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

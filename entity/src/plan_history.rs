use sea_orm::entity::prelude::*;

/// An audit row for a change to a plan's definition: who, why, and the definition before (none
/// when the plan was created) and after, as JSON text.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "plan_history")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub plan_id: Uuid,
    pub plan_code: String,
    pub actor: String,
    pub reason: String,
    pub before: Option<String>,
    pub after: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

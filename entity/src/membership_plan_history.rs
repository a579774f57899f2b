use sea_orm::entity::prelude::*;

/// The audit row of a change to a membership plan: the definition before (None when created) and
/// after, as JSON, with the actor and reason.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "membership_plan_history")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Uuid,
    pub plan_id: Uuid,
    pub code: String,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub before: Option<String>,
    pub after: String,
    pub at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

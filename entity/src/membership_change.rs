use sea_orm::entity::prelude::*;

/// The audit row of a membership's change of status (subscribe, pause, resume, cancel).
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "membership_changes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub organization_id: Uuid,
    pub membership_id: Uuid,
    pub action: String,
    pub from_status: Option<String>,
    pub to_status: String,
    pub actor: Option<String>,
    pub reason: Option<String>,
    pub at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

//! plan_history: an audit row for every change to a plan's prices or limits (DESIGN invariant 5):
//! who changed it, why, and the plan's definition before and after (JSON text, amounts as decimal
//! strings). Plans are the platform's catalogue, not a tenant's data: no row-level security.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000004_plan_history"
    }
}

#[derive(DeriveIden)]
enum PlanHistory {
    Table,
    Id,
    PlanId,
    PlanCode,
    Actor,
    Reason,
    Before,
    After,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PlanHistory::Table)
                    .col(
                        ColumnDef::new(PlanHistory::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(PlanHistory::PlanId).uuid().not_null())
                    .col(ColumnDef::new(PlanHistory::PlanCode).string().not_null())
                    .col(ColumnDef::new(PlanHistory::Actor).string().not_null())
                    .col(ColumnDef::new(PlanHistory::Reason).string().not_null())
                    .col(ColumnDef::new(PlanHistory::Before).text().null())
                    .col(ColumnDef::new(PlanHistory::After).text().not_null())
                    .col(
                        ColumnDef::new(PlanHistory::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("plan_history_by_plan")
                    .table(PlanHistory::Table)
                    .col(PlanHistory::PlanId)
                    .col(PlanHistory::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(PlanHistory::Table).to_owned())
            .await
    }
}

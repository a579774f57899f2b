//! connect_accounts: an organization's Stripe Connect (Express) account, as Tollgate last heard of
//! it from Stripe (an API answer or an account.updated webhook). Tenant table: row-level security
//! on Postgres.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261129_000008_connect_accounts"
    }
}

#[derive(DeriveIden)]
enum ConnectAccounts {
    Table,
    OrganizationId,
    StripeAccountId,
    ChargesEnabled,
    PayoutsEnabled,
    DetailsSubmitted,
    Disabled,
    RequirementsDue,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ConnectAccounts::Table)
                    .col(
                        ColumnDef::new(ConnectAccounts::OrganizationId)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ConnectAccounts::StripeAccountId)
                            .string_len(255)
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(ConnectAccounts::ChargesEnabled)
                            .boolean()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConnectAccounts::PayoutsEnabled)
                            .boolean()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConnectAccounts::DetailsSubmitted)
                            .boolean()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConnectAccounts::Disabled)
                            .boolean()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConnectAccounts::RequirementsDue)
                            .text()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ConnectAccounts::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(ConnectAccounts::Table, ConnectAccounts::OrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        crate::tenant_rls(manager, "connect_accounts", "organization_id").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ConnectAccounts::Table).to_owned())
            .await
    }
}

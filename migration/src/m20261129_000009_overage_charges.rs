//! overage_charges: each organization's OVERAGE units of a closed period and metric, one charge
//! (unique), billed to its Stripe customer as an invoice item by the outbox: claimed by one sender
//! at a time (`claimed_by` until `claimed_until`), sent with the charge's id as the Idempotency-Key,
//! retried with backoff, marked SENT, FAILED (Stripe refused) or VOID. Tenant table: row-level
//! security on Postgres (the outbox runs as the platform).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261129_000009_overage_charges"
    }
}

#[derive(DeriveIden)]
enum OverageCharges {
    Table,
    Id,
    OrganizationId,
    MetricCode,
    PeriodStart,
    Quantity,
    UnitPrice,
    Amount,
    Currency,
    Status,
    StripeId,
    Attempts,
    LastError,
    NextAttemptAt,
    ClaimedBy,
    ClaimedUntil,
    SentAt,
    SentPeriod,
    History,
    CreatedAt,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OverageCharges::Table)
                    .col(
                        ColumnDef::new(OverageCharges::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::OrganizationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::MetricCode)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::PeriodStart)
                            .date()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::Quantity)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::UnitPrice)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::Amount)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::Currency)
                            .string_len(3)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::Status)
                            .string_len(16)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::StripeId)
                            .string_len(255)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::Attempts)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(OverageCharges::LastError).text().null())
                    .col(
                        ColumnDef::new(OverageCharges::NextAttemptAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(OverageCharges::ClaimedBy).uuid().null())
                    .col(
                        ColumnDef::new(OverageCharges::ClaimedUntil)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::SentAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(ColumnDef::new(OverageCharges::SentPeriod).date().null())
                    .col(ColumnDef::new(OverageCharges::History).text().not_null())
                    .col(
                        ColumnDef::new(OverageCharges::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OverageCharges::UpdatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("overage_charges_once")
                    .table(OverageCharges::Table)
                    .col(OverageCharges::OrganizationId)
                    .col(OverageCharges::PeriodStart)
                    .col(OverageCharges::MetricCode)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("overage_charges_outbox")
                    .table(OverageCharges::Table)
                    .col(OverageCharges::Status)
                    .col(OverageCharges::NextAttemptAt)
                    .to_owned(),
            )
            .await?;
        crate::tenant_rls(manager, "overage_charges", "organization_id").await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(OverageCharges::Table).to_owned())
            .await
    }
}

//! Money received by organizations (the seed's payments and platform_revenue, tracked by
//! track_platform_revenue()): one row per Stripe PaymentIntent, with the platform's application fee
//! and the organization's net, and the refunds of each payment with the time each was made (a refund
//! counts in the period it happened). Each row keeps the calendar period (UTC month) it counts in,
//! so revenue per period is one GROUP BY on both engines. Amounts are BIGINT scaled by 10^4 like every decimal.
//! Tenant tables: row-level security on Postgres, as in m20261123_000003.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261129_000005_payments"
    }
}

#[derive(DeriveIden)]
enum Payments {
    Table,
    Id,
    OrganizationId,
    StripePaymentIntentId,
    Amount,
    Currency,
    ApplicationFee,
    ApplicationFeePct,
    NetAmount,
    RefundedAmount,
    Reference,
    OccurredAt,
    PeriodStart,
    CreatedAt,
    CreatedBy,
}

#[derive(DeriveIden)]
enum PaymentRefunds {
    Table,
    Id,
    OrganizationId,
    PaymentId,
    StripeRefundId,
    Amount,
    OccurredAt,
    PeriodStart,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
}

const TENANT_TABLES: [&str; 2] = ["payments", "payment_refunds"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Payments::Table)
                    .col(ColumnDef::new(Payments::Id).uuid().not_null().primary_key())
                    .col(ColumnDef::new(Payments::OrganizationId).uuid().not_null())
                    .col(
                        ColumnDef::new(Payments::StripePaymentIntentId)
                            .string_len(255)
                            .not_null()
                            .unique_key(),
                    )
                    .col(ColumnDef::new(Payments::Amount).big_integer().not_null())
                    .col(ColumnDef::new(Payments::Currency).string_len(3).not_null())
                    .col(
                        ColumnDef::new(Payments::ApplicationFee)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Payments::ApplicationFeePct)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Payments::NetAmount).big_integer().not_null())
                    .col(
                        ColumnDef::new(Payments::RefundedAmount)
                            .big_integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ColumnDef::new(Payments::Reference).string_len(255).null())
                    .col(
                        ColumnDef::new(Payments::OccurredAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Payments::PeriodStart).date().not_null())
                    .col(
                        ColumnDef::new(Payments::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(ColumnDef::new(Payments::CreatedBy).string_len(255).null())
                    .foreign_key(
                        ForeignKey::create()
                            .from(Payments::Table, Payments::OrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("payments_by_organization")
                    .table(Payments::Table)
                    .col(Payments::OrganizationId)
                    .col(Payments::OccurredAt)
                    .col(Payments::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("payments_by_period")
                    .table(Payments::Table)
                    .col(Payments::PeriodStart)
                    .col(Payments::OrganizationId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PaymentRefunds::Table)
                    .col(
                        ColumnDef::new(PaymentRefunds::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(PaymentRefunds::OrganizationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ColumnDef::new(PaymentRefunds::PaymentId).uuid().not_null())
                    .col(
                        ColumnDef::new(PaymentRefunds::StripeRefundId)
                            .string_len(255)
                            .not_null()
                            .unique_key(),
                    )
                    .col(
                        ColumnDef::new(PaymentRefunds::Amount)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(PaymentRefunds::OccurredAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(PaymentRefunds::PeriodStart)
                            .date()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(PaymentRefunds::CreatedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PaymentRefunds::Table, PaymentRefunds::PaymentId)
                            .to(Payments::Table, Payments::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("payment_refunds_by_organization")
                    .table(PaymentRefunds::Table)
                    .col(PaymentRefunds::OrganizationId)
                    .col(PaymentRefunds::PeriodStart)
                    .to_owned(),
            )
            .await?;
        for table in TENANT_TABLES {
            crate::tenant_rls(manager, table, "organization_id").await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(PaymentRefunds::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Payments::Table).to_owned())
            .await
    }
}

//! Stripe webhook events, each applied once: `stripe_events` holds every event id received (stored
//! in the transaction of its effects, so a replay finds it and changes nothing), and
//! `stripe_objects` the `created` of the newest event applied to each Stripe object (a
//! subscription, an invoice, a charge), so an older event delivered late never overrides it.
//! Platform data: no row-level security.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261129_000007_stripe_events"
    }
}

#[derive(DeriveIden)]
enum StripeEvents {
    Table,
    Id,
    Type,
    ObjectId,
    Created,
    OrganizationId,
    Outcome,
    AmountPaid,
    Currency,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum StripeObjects {
    Table,
    ObjectId,
    LastCreated,
    LastEventId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(StripeEvents::Table)
                    .col(
                        ColumnDef::new(StripeEvents::Id)
                            .string_len(255)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(StripeEvents::Type)
                            .string_len(255)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(StripeEvents::ObjectId)
                            .string_len(255)
                            .null(),
                    )
                    .col(
                        ColumnDef::new(StripeEvents::Created)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(StripeEvents::OrganizationId).uuid().null())
                    .col(
                        ColumnDef::new(StripeEvents::Outcome)
                            .string_len(64)
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(StripeEvents::AmountPaid)
                            .big_integer()
                            .null(),
                    )
                    .col(ColumnDef::new(StripeEvents::Currency).string_len(3).null())
                    .col(
                        ColumnDef::new(StripeEvents::ReceivedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(StripeObjects::Table)
                    .col(
                        ColumnDef::new(StripeObjects::ObjectId)
                            .string_len(255)
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(StripeObjects::LastCreated)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(StripeObjects::LastEventId)
                            .string_len(255)
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(StripeObjects::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(StripeEvents::Table).to_owned())
            .await
    }
}

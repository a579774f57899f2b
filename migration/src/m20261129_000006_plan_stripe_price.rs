//! plans.stripe_price_id: the Stripe Price that bills a plan. A Stripe subscription on this price
//! puts its organization on the plan; at most one plan per price.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261129_000006_plan_stripe_price"
    }
}

#[derive(DeriveIden)]
enum Plans {
    Table,
    StripePriceId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Plans::Table)
                    .add_column(ColumnDef::new(Plans::StripePriceId).string_len(255).null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("plans_by_stripe_price")
                    .table(Plans::Table)
                    .col(Plans::StripePriceId)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("plans_by_stripe_price")
                    .table(Plans::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Plans::Table)
                    .drop_column(Plans::StripePriceId)
                    .to_owned(),
            )
            .await
    }
}

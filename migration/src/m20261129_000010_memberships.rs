//! Memberships (seed 002): an organization's own membership plans, customers, their memberships,
//! bookings priced with a membership's benefits, and the seed's subscription_usage_summaries as
//! counters per membership and cycle (`membership_usage`). The ledger stays one: a membership's events
//! are `usage_events` rows that carry the membership and its cycle (new columns), with an overage flag
//! and charge. Overage charges of memberships go through the same outbox (`overage_charges`, one per
//! booking). Every new table is a tenant table: row-level security on Postgres. Indexes serve the
//! lookups the feature adds: a membership by its Stripe subscription, a payment by its reference.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261129_000010_memberships"
    }
}

#[derive(DeriveIden)]
enum MembershipPlans {
    Table,
    Id,
    OrganizationId,
    Code,
    Name,
    Price,
    Currency,
    Interval,
    ServicesPerCycle,
    DiscountPct,
    AllowOverage,
    OverageRate,
    Active,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Customers {
    Table,
    Id,
    OrganizationId,
    ExternalId,
    Name,
    Email,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Memberships {
    Table,
    Id,
    OrganizationId,
    CustomerId,
    PlanId,
    Status,
    StartedAt,
    PausedAt,
    Pauses,
    CancelledAt,
    StripeSubscriptionId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum MembershipUsage {
    Table,
    OrganizationId,
    MembershipId,
    Cycle,
    CycleStart,
    CycleEnd,
    IncludedServices,
    Credits,
    Used,
    Held,
    OverageCount,
    OverageCharges,
    Currency,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Bookings {
    Table,
    Id,
    OrganizationId,
    Reference,
    CustomerId,
    MembershipId,
    Status,
    Coverage,
    Guest,
    ServicePrice,
    MembershipDiscount,
    Subtotal,
    PlatformFee,
    PlatformFeePct,
    GuestSurcharge,
    Total,
    ProviderPayout,
    RemainingAfter,
    Currency,
    HoldsService,
    Cycle,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum MembershipChanges {
    Table,
    Id,
    OrganizationId,
    MembershipId,
    Action,
    FromStatus,
    ToStatus,
    Actor,
    Reason,
    At,
}

#[derive(DeriveIden)]
enum MembershipPlanHistory {
    Table,
    Id,
    OrganizationId,
    PlanId,
    Code,
    Actor,
    Reason,
    Before,
    After,
    At,
}

#[derive(DeriveIden)]
enum UsageEvents {
    Table,
    OrganizationId,
    MembershipId,
    Cycle,
    Overage,
    Charge,
    Id,
}

#[derive(DeriveIden)]
enum OverageCharges {
    Table,
    MembershipId,
    BookingId,
}

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
}

const TENANT_TABLES: [&str; 7] = [
    "membership_plans",
    "membership_plan_history",
    "customers",
    "memberships",
    "membership_usage",
    "bookings",
    "membership_changes",
];

fn uuid(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).uuid().not_null().to_owned()
}
fn opt_uuid(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).uuid().null().to_owned()
}
fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}
fn opt_ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}
fn scaled(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}
fn text(col: impl IntoIden, len: u32) -> ColumnDef {
    ColumnDef::new(col).string_len(len).not_null().to_owned()
}
fn opt_text(col: impl IntoIden, len: u32) -> ColumnDef {
    ColumnDef::new(col).string_len(len).null().to_owned()
}
fn flag(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).boolean().not_null().to_owned()
}
fn tenant_fk(table: impl IntoIden, col: impl IntoIden) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .from(table, col)
        .to(Organizations::Table, Organizations::Id)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(MembershipPlans::Table)
                    .col(uuid(MembershipPlans::Id).primary_key())
                    .col(uuid(MembershipPlans::OrganizationId))
                    .col(text(MembershipPlans::Code, 64))
                    .col(text(MembershipPlans::Name, 255))
                    .col(scaled(MembershipPlans::Price))
                    .col(text(MembershipPlans::Currency, 3))
                    .col(text(MembershipPlans::Interval, 8))
                    .col(
                        ColumnDef::new(MembershipPlans::ServicesPerCycle)
                            .integer()
                            .not_null(),
                    )
                    .col(scaled(MembershipPlans::DiscountPct))
                    .col(flag(MembershipPlans::AllowOverage))
                    .col(
                        ColumnDef::new(MembershipPlans::OverageRate)
                            .big_integer()
                            .null(),
                    )
                    .col(flag(MembershipPlans::Active))
                    .col(ts(MembershipPlans::CreatedAt))
                    .col(ts(MembershipPlans::UpdatedAt))
                    .foreign_key(&mut tenant_fk(
                        MembershipPlans::Table,
                        MembershipPlans::OrganizationId,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_membership_plans_code")
                    .table(MembershipPlans::Table)
                    .col(MembershipPlans::OrganizationId)
                    .col(MembershipPlans::Code)
                    .unique()
                    .to_owned(),
            )
            .await?;

        // The audit of membership plans' prices and allowances: who changed what, why, before and after.
        manager
            .create_table(
                Table::create()
                    .table(MembershipPlanHistory::Table)
                    .col(uuid(MembershipPlanHistory::Id).primary_key())
                    .col(uuid(MembershipPlanHistory::OrganizationId))
                    .col(uuid(MembershipPlanHistory::PlanId))
                    .col(text(MembershipPlanHistory::Code, 64))
                    .col(opt_text(MembershipPlanHistory::Actor, 255))
                    .col(opt_text(MembershipPlanHistory::Reason, 1000))
                    .col(ColumnDef::new(MembershipPlanHistory::Before).text().null())
                    .col(
                        ColumnDef::new(MembershipPlanHistory::After)
                            .text()
                            .not_null(),
                    )
                    .col(ts(MembershipPlanHistory::At))
                    .foreign_key(&mut tenant_fk(
                        MembershipPlanHistory::Table,
                        MembershipPlanHistory::OrganizationId,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_membership_plan_history")
                    .table(MembershipPlanHistory::Table)
                    .col(MembershipPlanHistory::OrganizationId)
                    .col(MembershipPlanHistory::PlanId)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Customers::Table)
                    .col(uuid(Customers::Id).primary_key())
                    .col(uuid(Customers::OrganizationId))
                    .col(opt_text(Customers::ExternalId, 255))
                    .col(text(Customers::Name, 255))
                    .col(opt_text(Customers::Email, 320))
                    .col(ts(Customers::CreatedAt))
                    .foreign_key(&mut tenant_fk(Customers::Table, Customers::OrganizationId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_customers_external_id")
                    .table(Customers::Table)
                    .col(Customers::OrganizationId)
                    .col(Customers::ExternalId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_customers_org")
                    .table(Customers::Table)
                    .col(Customers::OrganizationId)
                    .col(Customers::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Memberships::Table)
                    .col(uuid(Memberships::Id).primary_key())
                    .col(uuid(Memberships::OrganizationId))
                    .col(uuid(Memberships::CustomerId))
                    .col(uuid(Memberships::PlanId))
                    .col(text(Memberships::Status, 16))
                    .col(ts(Memberships::StartedAt))
                    .col(opt_ts(Memberships::PausedAt))
                    .col(ColumnDef::new(Memberships::Pauses).text().not_null())
                    .col(opt_ts(Memberships::CancelledAt))
                    .col(opt_text(Memberships::StripeSubscriptionId, 255))
                    .col(ts(Memberships::CreatedAt))
                    .col(ts(Memberships::UpdatedAt))
                    .foreign_key(&mut tenant_fk(
                        Memberships::Table,
                        Memberships::OrganizationId,
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Memberships::Table, Memberships::CustomerId)
                            .to(Customers::Table, Customers::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(Memberships::Table, Memberships::PlanId)
                            .to(MembershipPlans::Table, MembershipPlans::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_memberships_customer")
                    .table(Memberships::Table)
                    .col(Memberships::OrganizationId)
                    .col(Memberships::CustomerId)
                    .to_owned(),
            )
            .await?;
        // The membership a connected account's subscription event names.
        manager
            .create_index(
                Index::create()
                    .name("idx_memberships_subscription")
                    .table(Memberships::Table)
                    .col(Memberships::OrganizationId)
                    .col(Memberships::StripeSubscriptionId)
                    .to_owned(),
            )
            .await?;
        // A customer holds at most one ACTIVE or PAUSED membership in an organization; the database
        // says so too, so two concurrent subscribeCustomer calls cannot both win.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX ux_memberships_current ON memberships (organization_id, customer_id) \
                 WHERE status IN ('ACTIVE', 'PAUSED')",
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(MembershipUsage::Table)
                    .col(uuid(MembershipUsage::OrganizationId))
                    .col(uuid(MembershipUsage::MembershipId))
                    .col(ColumnDef::new(MembershipUsage::Cycle).integer().not_null())
                    .col(ts(MembershipUsage::CycleStart))
                    .col(ts(MembershipUsage::CycleEnd))
                    .col(scaled(MembershipUsage::IncludedServices))
                    .col(scaled(MembershipUsage::Credits).default(0))
                    .col(scaled(MembershipUsage::Used).default(0))
                    .col(scaled(MembershipUsage::Held).default(0))
                    .col(scaled(MembershipUsage::OverageCount).default(0))
                    .col(scaled(MembershipUsage::OverageCharges).default(0))
                    .col(text(MembershipUsage::Currency, 3))
                    .col(ts(MembershipUsage::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(MembershipUsage::OrganizationId)
                            .col(MembershipUsage::MembershipId)
                            .col(MembershipUsage::Cycle),
                    )
                    .foreign_key(&mut tenant_fk(
                        MembershipUsage::Table,
                        MembershipUsage::OrganizationId,
                    ))
                    .foreign_key(
                        ForeignKey::create()
                            .from(MembershipUsage::Table, MembershipUsage::MembershipId)
                            .to(Memberships::Table, Memberships::Id),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Bookings::Table)
                    .col(uuid(Bookings::Id).primary_key())
                    .col(uuid(Bookings::OrganizationId))
                    .col(text(Bookings::Reference, 255))
                    .col(opt_uuid(Bookings::CustomerId))
                    .col(opt_uuid(Bookings::MembershipId))
                    .col(text(Bookings::Status, 24))
                    .col(text(Bookings::Coverage, 16))
                    .col(flag(Bookings::Guest))
                    .col(scaled(Bookings::ServicePrice))
                    .col(scaled(Bookings::MembershipDiscount))
                    .col(scaled(Bookings::Subtotal))
                    .col(scaled(Bookings::PlatformFee))
                    .col(scaled(Bookings::PlatformFeePct))
                    .col(scaled(Bookings::GuestSurcharge))
                    .col(scaled(Bookings::Total))
                    .col(scaled(Bookings::ProviderPayout))
                    .col(
                        ColumnDef::new(Bookings::RemainingAfter)
                            .big_integer()
                            .null(),
                    )
                    .col(text(Bookings::Currency, 3))
                    .col(flag(Bookings::HoldsService))
                    .col(ColumnDef::new(Bookings::Cycle).integer().null())
                    .col(ts(Bookings::CreatedAt))
                    .col(ts(Bookings::UpdatedAt))
                    .foreign_key(&mut tenant_fk(Bookings::Table, Bookings::OrganizationId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_bookings_reference")
                    .table(Bookings::Table)
                    .col(Bookings::OrganizationId)
                    .col(Bookings::Reference)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_bookings_membership")
                    .table(Bookings::Table)
                    .col(Bookings::OrganizationId)
                    .col(Bookings::MembershipId)
                    .col(Bookings::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(MembershipChanges::Table)
                    .col(uuid(MembershipChanges::Id).primary_key())
                    .col(uuid(MembershipChanges::OrganizationId))
                    .col(uuid(MembershipChanges::MembershipId))
                    .col(text(MembershipChanges::Action, 16))
                    .col(opt_text(MembershipChanges::FromStatus, 16))
                    .col(text(MembershipChanges::ToStatus, 16))
                    .col(opt_text(MembershipChanges::Actor, 255))
                    .col(opt_text(MembershipChanges::Reason, 1000))
                    .col(ts(MembershipChanges::At))
                    .foreign_key(&mut tenant_fk(
                        MembershipChanges::Table,
                        MembershipChanges::OrganizationId,
                    ))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_membership_changes")
                    .table(MembershipChanges::Table)
                    .col(MembershipChanges::OrganizationId)
                    .col(MembershipChanges::MembershipId)
                    .to_owned(),
            )
            .await?;

        // The one ledger: a membership's events carry the membership and its cycle.
        for col in [
            opt_uuid(UsageEvents::MembershipId),
            ColumnDef::new(UsageEvents::Cycle)
                .integer()
                .null()
                .to_owned(),
            flag(UsageEvents::Overage).default(false).to_owned(),
            scaled(UsageEvents::Charge).default(0).to_owned(),
        ] {
            let mut col = col;
            manager
                .alter_table(
                    Table::alter()
                        .table(UsageEvents::Table)
                        .add_column(&mut col)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_usage_events_membership")
                    .table(UsageEvents::Table)
                    .col(UsageEvents::OrganizationId)
                    .col(UsageEvents::MembershipId)
                    .col(UsageEvents::Id)
                    .to_owned(),
            )
            .await?;

        // A booking's payment is found by its reference (paid once; kept on cancellation).
        manager
            .create_index(
                Index::create()
                    .name("idx_payments_reference")
                    .table(Alias::new("payments"))
                    .col(Alias::new("organization_id"))
                    .col(Alias::new("reference"))
                    .to_owned(),
            )
            .await?;

        // The outbox: a membership's overage is one charge per completed booking.
        for col in [
            opt_uuid(OverageCharges::MembershipId),
            opt_uuid(OverageCharges::BookingId),
        ] {
            let mut col = col;
            manager
                .alter_table(
                    Table::alter()
                        .table(OverageCharges::Table)
                        .add_column(&mut col)
                        .to_owned(),
                )
                .await?;
        }
        let db = manager.get_connection();
        db.execute_unprepared("DROP INDEX overage_charges_once")
            .await?;
        db.execute_unprepared(
            "CREATE UNIQUE INDEX overage_charges_period_once ON overage_charges (organization_id, period_start, metric_code) \
             WHERE booking_id IS NULL",
        )
        .await?;
        db.execute_unprepared(
            "CREATE UNIQUE INDEX overage_charges_booking ON overage_charges (organization_id, booking_id) \
             WHERE booking_id IS NOT NULL",
        )
        .await?;

        for table in TENANT_TABLES {
            crate::tenant_rls(manager, table, "organization_id").await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            "membership_changes",
            "bookings",
            "membership_usage",
            "memberships",
            "customers",
            "membership_plan_history",
            "membership_plans",
        ] {
            manager
                .drop_table(Table::drop().table(Alias::new(table)).to_owned())
                .await?;
        }
        Ok(())
    }
}

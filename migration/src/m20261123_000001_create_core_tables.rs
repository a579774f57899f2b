//! The core tables: catalogue (metrics, plans, plan limits), tenants (organizations, platform team),
//! and the tenant data (ledger, counters, period rows, subscription history, alerts).
//!
//! Tenant tables are keyed with `organization_id` first, so that every tenant query is an index prefix
//! scan and the tables can be distributed by organization id (Citus) without changing their keys.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Metrics {
    Table,
    Code,
    Name,
    Kind,
    Unit,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Plans {
    Table,
    Id,
    Code,
    Name,
    Rank,
    PriceMonthly,
    Currency,
    TrialDays,
    ApplicationFeePct,
    Active,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PlanLimits {
    Table,
    PlanId,
    MetricCode,
    Included,
    Enforcement,
    OverageUnitPrice,
}

#[derive(DeriveIden)]
enum Organizations {
    Table,
    Id,
    Name,
    Slug,
    Status,
    PlanId,
    TrialEndsAt,
    StripeCustomerId,
    StripeSubscriptionId,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PlatformTeam {
    Table,
    Sub,
    AddedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum UsageEvents {
    Table,
    OrganizationId,
    Id,
    MetricCode,
    Kind,
    Quantity,
    PeriodStart,
    IdempotencyKey,
    Reference,
    Reason,
    Actor,
    ReversesEventId,
    OccurredAt,
    RecordedAt,
}

#[derive(DeriveIden)]
enum OrganizationUsage {
    Table,
    OrganizationId,
    PeriodStart,
    PeriodEnd,
    HasExceededLimits,
    ExceededLimitsDetails,
    AlertEpoch,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum UsageCounters {
    Table,
    OrganizationId,
    PeriodStart,
    MetricCode,
    Used,
    Credits,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum SubscriptionHistory {
    Table,
    OrganizationId,
    Id,
    OldPlanId,
    NewPlanId,
    ChangeType,
    StripeEventId,
    StripeSubscriptionId,
    AmountPaid,
    EffectiveDate,
    Reason,
    CreatedAt,
    CreatedBy,
}

#[derive(DeriveIden)]
enum UsageAlerts {
    Table,
    OrganizationId,
    Id,
    MetricCode,
    Kind,
    PeriodStart,
    AlertEpoch,
    ThresholdPct,
    Used,
    Allowance,
    UtilizationPct,
    CreatedAt,
}

fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn scaled(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).big_integer().not_null().to_owned()
}

fn text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).string().not_null().to_owned()
}

fn opt_text(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col).string().null().to_owned()
}

fn index(name: &str, table: impl IntoIden, cols: Vec<DynIden>) -> IndexCreateStatement {
    let mut stmt = Index::create();
    stmt.name(name).table(table);
    for c in cols {
        stmt.col(c);
    }
    stmt.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Metrics::Table)
                    .col(text(Metrics::Code).primary_key())
                    .col(text(Metrics::Name))
                    .col(text(Metrics::Kind))
                    .col(text(Metrics::Unit))
                    .col(ts(Metrics::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Plans::Table)
                    .col(ColumnDef::new(Plans::Id).uuid().not_null().primary_key())
                    .col(text(Plans::Code).unique_key())
                    .col(text(Plans::Name))
                    .col(ColumnDef::new(Plans::Rank).integer().not_null())
                    .col(scaled(Plans::PriceMonthly))
                    .col(text(Plans::Currency))
                    .col(ColumnDef::new(Plans::TrialDays).integer().not_null())
                    .col(scaled(Plans::ApplicationFeePct))
                    .col(ColumnDef::new(Plans::Active).boolean().not_null())
                    .col(ts(Plans::CreatedAt))
                    .col(ts(Plans::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PlanLimits::Table)
                    .col(ColumnDef::new(PlanLimits::PlanId).uuid().not_null())
                    .col(text(PlanLimits::MetricCode))
                    .col(ColumnDef::new(PlanLimits::Included).big_integer().null())
                    .col(text(PlanLimits::Enforcement))
                    .col(
                        ColumnDef::new(PlanLimits::OverageUnitPrice)
                            .big_integer()
                            .null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(PlanLimits::PlanId)
                            .col(PlanLimits::MetricCode),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PlanLimits::Table, PlanLimits::PlanId)
                            .to(Plans::Table, Plans::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(PlanLimits::Table, PlanLimits::MetricCode)
                            .to(Metrics::Table, Metrics::Code),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Organizations::Table)
                    .col(
                        ColumnDef::new(Organizations::Id)
                            .uuid()
                            .not_null()
                            .primary_key(),
                    )
                    .col(text(Organizations::Name))
                    .col(text(Organizations::Slug).unique_key())
                    .col(text(Organizations::Status))
                    .col(ColumnDef::new(Organizations::PlanId).uuid().null())
                    .col(
                        ColumnDef::new(Organizations::TrialEndsAt)
                            .timestamp_with_time_zone()
                            .null(),
                    )
                    .col(opt_text(Organizations::StripeCustomerId))
                    .col(opt_text(Organizations::StripeSubscriptionId))
                    .col(ts(Organizations::CreatedAt))
                    .col(ts(Organizations::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Organizations::Table, Organizations::PlanId)
                            .to(Plans::Table, Plans::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_organizations_status",
                Organizations::Table,
                vec![
                    Organizations::Status.into_iden(),
                    Organizations::CreatedAt.into_iden(),
                ],
            ))
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PlatformTeam::Table)
                    .col(text(PlatformTeam::Sub).primary_key())
                    .col(opt_text(PlatformTeam::AddedBy))
                    .col(ts(PlatformTeam::CreatedAt))
                    .to_owned(),
            )
            .await?;

        // The ledger: append-only, never updated, never deleted.
        manager
            .create_table(
                Table::create()
                    .table(UsageEvents::Table)
                    .col(
                        ColumnDef::new(UsageEvents::OrganizationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ColumnDef::new(UsageEvents::Id).uuid().not_null())
                    .col(text(UsageEvents::MetricCode))
                    .col(text(UsageEvents::Kind))
                    .col(scaled(UsageEvents::Quantity))
                    .col(ColumnDef::new(UsageEvents::PeriodStart).date().not_null())
                    .col(opt_text(UsageEvents::IdempotencyKey))
                    .col(opt_text(UsageEvents::Reference))
                    .col(opt_text(UsageEvents::Reason))
                    .col(opt_text(UsageEvents::Actor))
                    .col(ColumnDef::new(UsageEvents::ReversesEventId).uuid().null())
                    .col(ts(UsageEvents::OccurredAt))
                    .col(ts(UsageEvents::RecordedAt))
                    .primary_key(
                        Index::create()
                            .col(UsageEvents::OrganizationId)
                            .col(UsageEvents::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(UsageEvents::Table, UsageEvents::OrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                index(
                    "ux_usage_events_idempotency",
                    UsageEvents::Table,
                    vec![
                        UsageEvents::OrganizationId.into_iden(),
                        UsageEvents::IdempotencyKey.into_iden(),
                    ],
                )
                .unique()
                .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_usage_events_period",
                UsageEvents::Table,
                vec![
                    UsageEvents::OrganizationId.into_iden(),
                    UsageEvents::PeriodStart.into_iden(),
                    UsageEvents::MetricCode.into_iden(),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_usage_events_reference",
                UsageEvents::Table,
                vec![
                    UsageEvents::OrganizationId.into_iden(),
                    UsageEvents::Reference.into_iden(),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_usage_events_recorded",
                UsageEvents::Table,
                vec![
                    UsageEvents::OrganizationId.into_iden(),
                    UsageEvents::RecordedAt.into_iden(),
                ],
            ))
            .await?;

        // The seed's organization_usage: one row per organization and period, with the limit flags.
        manager
            .create_table(
                Table::create()
                    .table(OrganizationUsage::Table)
                    .col(
                        ColumnDef::new(OrganizationUsage::OrganizationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationUsage::PeriodStart)
                            .date()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationUsage::PeriodEnd)
                            .date()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationUsage::HasExceededLimits)
                            .boolean()
                            .not_null()
                            .default(false),
                    )
                    .col(
                        ColumnDef::new(OrganizationUsage::ExceededLimitsDetails)
                            .json()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(OrganizationUsage::AlertEpoch)
                            .integer()
                            .not_null()
                            .default(0),
                    )
                    .col(ts(OrganizationUsage::CreatedAt))
                    .col(ts(OrganizationUsage::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(OrganizationUsage::OrganizationId)
                            .col(OrganizationUsage::PeriodStart),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(OrganizationUsage::Table, OrganizationUsage::OrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_org_usage_period",
                OrganizationUsage::Table,
                vec![
                    OrganizationUsage::PeriodStart.into_iden(),
                    OrganizationUsage::PeriodEnd.into_iden(),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_org_usage_updated",
                OrganizationUsage::Table,
                vec![OrganizationUsage::UpdatedAt.into_iden()],
            ))
            .await?;
        // A partial index, as in the seed: only the exceeded rows are indexed.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_org_usage_exceeded ON organization_usage (period_start, organization_id) \
                 WHERE has_exceeded_limits",
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UsageCounters::Table)
                    .col(
                        ColumnDef::new(UsageCounters::OrganizationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ColumnDef::new(UsageCounters::PeriodStart).date().not_null())
                    .col(text(UsageCounters::MetricCode))
                    .col(scaled(UsageCounters::Used).default(0))
                    .col(scaled(UsageCounters::Credits).default(0))
                    .col(ts(UsageCounters::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(UsageCounters::OrganizationId)
                            .col(UsageCounters::PeriodStart)
                            .col(UsageCounters::MetricCode),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(UsageCounters::Table, UsageCounters::OrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(SubscriptionHistory::Table)
                    .col(
                        ColumnDef::new(SubscriptionHistory::OrganizationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ColumnDef::new(SubscriptionHistory::Id).uuid().not_null())
                    .col(ColumnDef::new(SubscriptionHistory::OldPlanId).uuid().null())
                    .col(ColumnDef::new(SubscriptionHistory::NewPlanId).uuid().null())
                    .col(text(SubscriptionHistory::ChangeType))
                    .col(opt_text(SubscriptionHistory::StripeEventId))
                    .col(opt_text(SubscriptionHistory::StripeSubscriptionId))
                    .col(
                        ColumnDef::new(SubscriptionHistory::AmountPaid)
                            .big_integer()
                            .null(),
                    )
                    .col(
                        ColumnDef::new(SubscriptionHistory::EffectiveDate)
                            .date()
                            .not_null(),
                    )
                    .col(opt_text(SubscriptionHistory::Reason))
                    .col(ts(SubscriptionHistory::CreatedAt))
                    .col(opt_text(SubscriptionHistory::CreatedBy))
                    .primary_key(
                        Index::create()
                            .col(SubscriptionHistory::OrganizationId)
                            .col(SubscriptionHistory::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(
                                SubscriptionHistory::Table,
                                SubscriptionHistory::OrganizationId,
                            )
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_sub_history_date",
                SubscriptionHistory::Table,
                vec![
                    SubscriptionHistory::OrganizationId.into_iden(),
                    SubscriptionHistory::EffectiveDate.into_iden(),
                    SubscriptionHistory::CreatedAt.into_iden(),
                ],
            ))
            .await?;
        manager
            .create_index(index(
                "idx_sub_history_type",
                SubscriptionHistory::Table,
                vec![
                    SubscriptionHistory::OrganizationId.into_iden(),
                    SubscriptionHistory::ChangeType.into_iden(),
                ],
            ))
            .await?;
        // A replayed Stripe webhook carries the same event id and must change nothing.
        manager
            .create_index(
                index(
                    "ux_sub_history_stripe_event",
                    SubscriptionHistory::Table,
                    vec![SubscriptionHistory::StripeEventId.into_iden()],
                )
                .unique()
                .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(UsageAlerts::Table)
                    .col(
                        ColumnDef::new(UsageAlerts::OrganizationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(ColumnDef::new(UsageAlerts::Id).uuid().not_null())
                    .col(text(UsageAlerts::MetricCode))
                    .col(text(UsageAlerts::Kind))
                    .col(ColumnDef::new(UsageAlerts::PeriodStart).date().not_null())
                    .col(ColumnDef::new(UsageAlerts::AlertEpoch).integer().not_null())
                    .col(scaled(UsageAlerts::ThresholdPct))
                    .col(scaled(UsageAlerts::Used))
                    .col(scaled(UsageAlerts::Allowance))
                    .col(scaled(UsageAlerts::UtilizationPct))
                    .col(ts(UsageAlerts::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(UsageAlerts::OrganizationId)
                            .col(UsageAlerts::Id),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(UsageAlerts::Table, UsageAlerts::OrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        // At most one alert per organization, period, metric and kind until a plan change re-arms them.
        manager
            .create_index(
                index(
                    "ux_usage_alerts_once",
                    UsageAlerts::Table,
                    vec![
                        UsageAlerts::OrganizationId.into_iden(),
                        UsageAlerts::PeriodStart.into_iden(),
                        UsageAlerts::MetricCode.into_iden(),
                        UsageAlerts::Kind.into_iden(),
                        UsageAlerts::AlertEpoch.into_iden(),
                    ],
                )
                .unique()
                .to_owned(),
            )
            .await?;
        manager
            .create_index(index(
                "idx_usage_alerts_created",
                UsageAlerts::Table,
                vec![
                    UsageAlerts::OrganizationId.into_iden(),
                    UsageAlerts::CreatedAt.into_iden(),
                ],
            ))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            UsageAlerts::Table.into_iden(),
            SubscriptionHistory::Table.into_iden(),
            UsageCounters::Table.into_iden(),
            OrganizationUsage::Table.into_iden(),
            UsageEvents::Table.into_iden(),
            PlatformTeam::Table.into_iden(),
            Organizations::Table.into_iden(),
            PlanLimits::Table.into_iden(),
            Plans::Table.into_iden(),
            Metrics::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

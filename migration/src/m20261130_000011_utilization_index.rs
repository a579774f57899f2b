//! The utilization index behind the platform's "above N%" and "exceeded" pages (`usageSummaries`):
//!
//! - `usage_utilization`: one row per organization, period and metric that the organization's plan
//!   limits, with the metric's utilization (used * 100 / allowance, unrounded; an allowance of zero
//!   or less reads 100 when something was used and 0 otherwise, as the summary shows) and whether
//!   it is past its allowance (used > allowance, kept apart: at a zero allowance 100 may or may not
//!   be exceeded). A metric the plan does not limit has no row. Derived state, never a source: the
//!   counters and the plan decide it, `recompute` checks it.
//! - `organization_usage.peak_utilization_pct`: the highest of those per period row (NULL when the
//!   plan limits nothing); with `has_exceeded_limits` it serves the pages without a metric.
//! - `usage_index_periods`: a period whose rows are known complete for every organization (written
//!   once every organization was materialized); until then the pages are computed from counters.
//!
//! Nothing is backfilled here: the server (and `tollgate recompute`) materializes the current period
//! on start, and past periods are always computed.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261130_000011_utilization_index"
    }
}

#[derive(DeriveIden)]
enum UsageUtilization {
    Table,
    OrganizationId,
    PeriodStart,
    MetricCode,
    UtilizationPct,
    Exceeded,
}

#[derive(DeriveIden)]
enum UsageIndexPeriods {
    Table,
    PeriodStart,
    CompletedAt,
}

#[derive(DeriveIden)]
enum OrganizationUsage {
    Table,
    PeakUtilizationPct,
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
                    .table(UsageUtilization::Table)
                    .col(
                        ColumnDef::new(UsageUtilization::OrganizationId)
                            .uuid()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageUtilization::PeriodStart)
                            .date()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageUtilization::MetricCode)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageUtilization::UtilizationPct)
                            .double()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(UsageUtilization::Exceeded)
                            .boolean()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(UsageUtilization::OrganizationId)
                            .col(UsageUtilization::PeriodStart)
                            .col(UsageUtilization::MetricCode),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(UsageUtilization::Table, UsageUtilization::OrganizationId)
                            .to(Organizations::Table, Organizations::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(OrganizationUsage::Table)
                    .add_column(
                        ColumnDef::new(OrganizationUsage::PeakUtilizationPct)
                            .double()
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(UsageIndexPeriods::Table)
                    .col(
                        ColumnDef::new(UsageIndexPeriods::PeriodStart)
                            .date()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(UsageIndexPeriods::CompletedAt)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        // The pages walk these from the top: a period, (a metric,) utilization downwards, ties by
        // organization id; the partial ones hold only what is past its allowance.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_usage_utilization_page ON usage_utilization \
                   (period_start, metric_code, utilization_pct DESC, organization_id); \
                 CREATE INDEX idx_usage_utilization_exceeded ON usage_utilization \
                   (period_start, metric_code, utilization_pct DESC, organization_id) WHERE exceeded; \
                 CREATE INDEX idx_org_usage_peak ON organization_usage \
                   (period_start, peak_utilization_pct DESC, organization_id); \
                 CREATE INDEX idx_org_usage_peak_exceeded ON organization_usage \
                   (period_start, peak_utilization_pct DESC, organization_id) WHERE has_exceeded_limits;",
            )
            .await?;
        crate::tenant_rls(manager, "usage_utilization", "organization_id").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS idx_org_usage_peak_exceeded; \
                 DROP INDEX IF EXISTS idx_org_usage_peak;",
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(OrganizationUsage::Table)
                    .drop_column(OrganizationUsage::PeakUtilizationPct)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(UsageIndexPeriods::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(UsageUtilization::Table).to_owned())
            .await
    }
}

//! reverseUsage finds a reference's USAGE events that no REVERSAL points at yet; without an index on
//! `reverses_event_id`, telling which were reversed read every event of the organization for each
//! one. The index is partial, `WHERE reverses_event_id IS NOT NULL`: only reversals are written to
//! it, so a recording writes nothing more (m20261130_000012's reasoning), and
//! `reverses_event_id = <id>` implies its condition on both engines.
//!
//! At upgrade the index is built from the ledger's reversals; on Postgres the build blocks writes to
//! the ledger while it scans it (README, running in production).

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261130_000013_reversal_index"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX idx_usage_events_reversal ON usage_events (organization_id, reverses_event_id) \
                 WHERE reverses_event_id IS NOT NULL",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS idx_usage_events_reversal")
            .await
            .map(|_| ())
    }
}

//! Fewer b-trees written per recording. Every event a recording appends is written to the ledger's
//! table and to each of its indexes, and on SQLite each page a commit dirties is a WAL frame, so an
//! index a plain recording does not need costs every recording (BENCHMARKS.md, issue 14's fourth
//! pass: on SQLite this change took recordUsage at c=64 from about 2,550 to about 3,300/s, and the
//! server's CPU a recording from about 490 to 390 µs):
//!
//! - `idx_usage_events_recorded` (organization, recorded_at) is dropped: no query reads it. Pages of
//!   the ledger go newest first by the primary key, whose UUIDv7 ids already follow recording time.
//! - `idx_usage_events_reference` becomes partial, `WHERE reference IS NOT NULL`: it serves only
//!   lookups by a reference (`reference = $n`, which both engines know implies NOT NULL), and most
//!   events carry none.
//!
//! The membership index stays whole: the organization's ledger page asks `membership_id IS NULL`
//! in id order, which it serves.
//!
//! At upgrade the partial index is built from the ledger's referenced events; on Postgres that
//! build blocks writes to the ledger while it runs (migrations run in a transaction, where
//! `CREATE INDEX CONCURRENTLY` cannot). The statements go as one script: on SQLite another pooled
//! connection would otherwise still see the dropped index in its cached schema.

use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261130_000012_ledger_indexes"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS idx_usage_events_recorded; \
                 DROP INDEX IF EXISTS idx_usage_events_reference; \
                 CREATE INDEX idx_usage_events_reference ON usage_events (organization_id, reference) \
                   WHERE reference IS NOT NULL;",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "DROP INDEX IF EXISTS idx_usage_events_reference; \
                 CREATE INDEX idx_usage_events_reference ON usage_events (organization_id, reference); \
                 CREATE INDEX idx_usage_events_recorded ON usage_events (organization_id, recorded_at);",
            )
            .await
            .map(|_| ())
    }
}

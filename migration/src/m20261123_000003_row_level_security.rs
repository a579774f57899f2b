//! Row-level security on every tenant table (Postgres only; SQLite has no roles). A row is visible
//! and writable when the transaction set the platform role, or set the row's organization:
//!
//! ```sql
//! SELECT set_config('tollgate.org_id', '<uuid>', true), set_config('tollgate.platform', 'off', true);
//! ```
//!
//! A transaction that set nothing sees nothing. FORCE makes the policies apply to the tables' owner
//! too (the role the server connects as); only superusers and BYPASSRLS roles pass them, so the server
//! must not connect as one.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261123_000003_row_level_security"
    }
}

/// Tenant tables and the column that names their organization.
const TENANT_TABLES: [(&str, &str); 6] = [
    ("organizations", "id"),
    ("usage_events", "organization_id"),
    ("usage_counters", "organization_id"),
    ("organization_usage", "organization_id"),
    ("subscription_history", "organization_id"),
    ("usage_alerts", "organization_id"),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for (table, column) in TENANT_TABLES {
            // The comparison keeps the column bare, so the organization_id-first indexes still serve.
            let visible = format!(
                "current_setting('tollgate.platform', true) = 'on' \
                 OR {column} = NULLIF(current_setting('tollgate.org_id', true), '')::uuid"
            );
            db.execute_unprepared(&format!(
                "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY; \
                 ALTER TABLE {table} FORCE ROW LEVEL SECURITY; \
                 CREATE POLICY tollgate_tenant ON {table} USING ({visible}) WITH CHECK ({visible});"
            ))
            .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for (table, _) in TENANT_TABLES {
            db.execute_unprepared(&format!(
                "DROP POLICY IF EXISTS tollgate_tenant ON {table}; \
                 ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY; \
                 ALTER TABLE {table} DISABLE ROW LEVEL SECURITY;"
            ))
            .await?;
        }
        Ok(())
    }
}

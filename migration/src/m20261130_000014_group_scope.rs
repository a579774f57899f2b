//! The group writer's scope (Postgres only). A group commit carries many callers' recordings
//! (`src/domain/usage/group.rs`); its multi-row statements read and write several organizations at
//! once, each already checked against its own caller's scope. This migration widens every tenant
//! policy by one disjunct: a row is also visible and writable when its organization is in the
//! transaction's `tollgate.org_ids`, a comma-separated list of ids:
//!
//! ```sql
//! SELECT set_config('tollgate.org_ids', '<uuid>,<uuid>', true), set_config('tollgate.org_id', '', true),
//!        set_config('tollgate.platform', 'off', true);
//! ```
//!
//! The other two settings keep their meaning, and a transaction that set none still sees nothing.
//! Every tenant policy is named `tollgate_tenant` (m20261123_000003 and `crate::tenant_rls`); the
//! organizations table names its organization `id`, every other tenant table `organization_id`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DbBackend, Statement};

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261130_000014_group_scope"
    }
}

/// The tables with a tenant policy, and the column that names their organization.
async fn tenant_tables(manager: &SchemaManager<'_>) -> Result<Vec<(String, &'static str)>, DbErr> {
    let rows = manager
        .get_connection()
        .query_all_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT tablename::text AS t FROM pg_policies \
             WHERE policyname = 'tollgate_tenant' AND schemaname = current_schema() ORDER BY 1",
        ))
        .await?;
    rows.iter()
        .map(|r| {
            let table: String = r.try_get("", "t")?;
            let column = if table == "organizations" {
                "id"
            } else {
                "organization_id"
            };
            Ok((table, column))
        })
        .collect()
}

/// Sets every tenant policy's condition to `visible(column)` (Postgres).
pub(crate) async fn set_policies(
    manager: &SchemaManager<'_>,
    visible: impl Fn(&str) -> String,
) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    for (table, column) in tenant_tables(manager).await? {
        let visible = visible(column);
        manager
            .get_connection()
            .execute_unprepared(&format!(
                "ALTER POLICY tollgate_tenant ON {table} USING ({visible}) WITH CHECK ({visible})"
            ))
            .await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        set_policies(manager, |c| crate::tenant_visible(c, true)).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        set_policies(manager, |c| crate::tenant_visible(c, false)).await
    }
}

//! Schema history of Tollgate. Each migration is applied once and never edited after it lands; the
//! same migrations run on SQLite (the embedded default) and on Postgres.
//!
//! Every decimal quantity or amount is stored as a BIGINT scaled by 10^4 (see `DECIMAL_SCALE`), because
//! SQLite has no exact decimal type and SeaORM would store `Decimal` as REAL there. Integer arithmetic
//! in SQL (`used = used + $q`) is exact on both engines.

pub use sea_orm_migration::prelude::*;

mod m20261123_000001_create_core_tables;
mod m20261123_000002_seed_defaults;
mod m20261123_000003_row_level_security;
mod m20261123_000004_plan_history;
mod m20261129_000005_payments;
mod m20261129_000006_plan_stripe_price;
mod m20261129_000007_stripe_events;
mod m20261129_000008_connect_accounts;
mod m20261129_000009_overage_charges;
mod m20261129_000010_memberships;
mod m20261130_000011_utilization_index;
mod m20261130_000012_ledger_indexes;
mod m20261130_000013_reversal_index;
mod m20261130_000014_group_scope;
mod m20261130_000015_scope_once;

/// The condition of a tenant policy: the transaction set the platform role or the row's organization,
/// and with `groups` (m20261130_000014 on), or listed the organization in `tollgate.org_ids`. The
/// comparisons keep the column bare, so the organization_id-first indexes still serve.
pub(crate) fn tenant_visible(column: &str, groups: bool) -> String {
    let mut visible = format!(
        "current_setting('tollgate.platform', true) = 'on' \
         OR {column} = NULLIF(current_setting('tollgate.org_id', true), '')::uuid"
    );
    if groups {
        // A substring test, not a parsed array: the condition is evaluated for every row a
        // statement reads or writes, and parsing the list each time cost a statement over n
        // organizations O(n) for each row. The list holds ids alone, each 36 characters without a
        // comma, joined by commas: an id found in it is one of its ids.
        visible.push_str(&format!(
            " OR strpos(current_setting('tollgate.org_ids', true), {column}::text) > 0"
        ));
    }
    visible
}

/// The condition of a tenant policy since m20261130_000015: the same three disjuncts as
/// `tenant_visible(column, true)`, each setting read once per statement rather than once per row.
/// A scalar subquery that refers to no column of the row is an InitPlan: Postgres evaluates it once
/// when the statement first needs it, so the row's test is a boolean, a uuid comparison, and a
/// search of the group's parsed ids (O(group), with no parsing or text search per row).
/// The outer `::uuid[]` keeps `= ANY (..)` an array comparison, not the `= ANY (subquery)` form.
/// Every statement that sets these settings reads no tenant table itself (`set_config` runs
/// in a statement of its own, before the ones it scopes), so once per statement is the same as
/// once per row.
pub(crate) fn tenant_visible_once(column: &str) -> String {
    format!(
        "(SELECT current_setting('tollgate.platform', true) = 'on') \
         OR {column} = (SELECT NULLIF(current_setting('tollgate.org_id', true), '')::uuid) \
         OR {column} = ANY ((SELECT string_to_array(NULLIF(current_setting('tollgate.org_ids', true), ''), ',')::uuid[])::uuid[])"
    )
}

/// Row-level security on a tenant table, as m20261123_000003 set it on the first ones (Postgres;
/// SQLite has no roles): a row is visible and writable when the transaction set the platform role
/// or the row's organization, and FORCE applies it to the table's owner too. m20261130_000014 then
/// widened every such policy to the group writer's list (`tenant_visible(column, true)`), and
/// m20261130_000015 made each one read its settings once per statement (`tenant_visible_once`): a
/// tenant table created after them must set that condition too.
pub(crate) async fn tenant_rls(
    manager: &SchemaManager<'_>,
    table: &str,
    column: &str,
) -> Result<(), DbErr> {
    use sea_orm_migration::sea_orm::DbBackend;
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let visible = tenant_visible(column, false);
    manager
        .get_connection()
        .execute_unprepared(&format!(
            "ALTER TABLE {table} ENABLE ROW LEVEL SECURITY; \
             ALTER TABLE {table} FORCE ROW LEVEL SECURITY; \
             CREATE POLICY tollgate_tenant ON {table} USING ({visible}) WITH CHECK ({visible});"
        ))
        .await
        .map(|_| ())
}

/// Number of decimal places kept by every scaled-integer column.
pub const DECIMAL_SCALE: u32 = 4;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261123_000001_create_core_tables::Migration),
            Box::new(m20261123_000002_seed_defaults::Migration),
            Box::new(m20261123_000003_row_level_security::Migration),
            Box::new(m20261123_000004_plan_history::Migration),
            Box::new(m20261129_000005_payments::Migration),
            Box::new(m20261129_000006_plan_stripe_price::Migration),
            Box::new(m20261129_000007_stripe_events::Migration),
            Box::new(m20261129_000008_connect_accounts::Migration),
            Box::new(m20261129_000009_overage_charges::Migration),
            Box::new(m20261129_000010_memberships::Migration),
            Box::new(m20261130_000011_utilization_index::Migration),
            Box::new(m20261130_000012_ledger_indexes::Migration),
            Box::new(m20261130_000013_reversal_index::Migration),
            Box::new(m20261130_000014_group_scope::Migration),
            Box::new(m20261130_000015_scope_once::Migration),
        ]
    }
}

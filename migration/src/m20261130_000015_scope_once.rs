//! Tenant policies that read the caller's scope once per statement (Postgres only).
//!
//! Until now each policy called `current_setting` for every row a statement read or wrote: it
//! compared the platform setting, parsed the organization's id, and searched the group's list of
//! ids (m20261130_000014) as text. That search counts characters in a UTF-8 database, so it cost
//! O(length of the list) for each row. A wave of n organizations, whose statements touch O(n) rows,
//! paid O(n²). Measured with auto_explain during the fan-out benchmark: a 512-organization wave's
//! read spent 41 µs per row in the policy, 0.15 s in all.
//!
//! Each setting is now a scalar subquery (an InitPlan, evaluated once per statement), and the list
//! is parsed once into a `uuid[]` (`crate::tenant_visible_once`). A transaction that set nothing
//! still sees nothing; what each setting means is unchanged.

use crate::m20261130_000014_group_scope::set_policies;
use sea_orm_migration::prelude::*;

pub struct Migration;

impl MigrationName for Migration {
    fn name(&self) -> &str {
        "m20261130_000015_scope_once"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        set_policies(manager, crate::tenant_visible_once).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        set_policies(manager, |c| crate::tenant_visible(c, true)).await
    }
}

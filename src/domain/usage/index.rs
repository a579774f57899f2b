//! The utilization index of the platform's pages (`store::utilization`): written with the period's
//! flags by `reevaluate`, for every organization when a period starts (`materialize_period`), for
//! a new organization at its creation, and into the current period when a GAUGE moves in an earlier
//! one (the current period may carry its reading).

use std::sync::atomic::Ordering;

use super::*;

/// How long after a period starts its materialization waits: a change that began in the previous
/// period (an organization's creation) has committed by then, so none is missed.
pub const MATERIALIZE_GRACE: Duration = Duration::minutes(1);

impl Engine {
    /// Writes an organization's period row and index from its counters and `rules`, raising no alert.
    /// The caller holds the period lock.
    pub(crate) async fn write_state_in(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        org: OrganizationId,
        period: Period,
        rules: &HashMap<String, LimitRule>,
    ) -> AppResult<()> {
        let catalog = self.catalog().await?;
        let counters = store::ledger::counters(txn, scope, &[org], period).await?;
        let states = states_from(period, &catalog.kinds, rules, &counters);
        let state = evaluation::period_state(&states);
        store::utilization::write_period_state(txn, scope, org, period, &state).await?;
        Ok(())
    }

    /// After a change in an earlier period: a GAUGE moved there may be the reading the current
    /// period carries, so the current period's state is written again (under its lock, taken after
    /// the earlier period's: locks go in ascending period order).
    pub(crate) async fn carry_into_current(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        org: OrganizationId,
        period: Period,
        rules: &HashMap<String, LimitRule>,
        only_metric: Option<&str>,
    ) -> AppResult<()> {
        let current = Period::current();
        if period >= current {
            return Ok(());
        }
        let catalog = self.catalog().await?;
        let gauge = |k: &MetricKind| *k == MetricKind::Gauge;
        let moved_gauge = match only_metric {
            Some(m) => catalog.kinds.get(m).is_some_and(gauge),
            None => catalog.kinds.values().any(gauge),
        };
        if !moved_gauge {
            return Ok(());
        }
        store::ledger::lock_period(txn, scope, org, current).await?;
        self.write_state_in(txn, scope, org, current, rules).await
    }

    /// Writes one organization's state in `period` in a transaction of its own (a materialization).
    /// On Postgres it first takes the plans' lock shared, so a concurrent upsertPlan either runs
    /// before (the new limits are read here) or after (it finds this period row and re-evaluates it).
    pub async fn index_org(&self, org: OrganizationId, period: Period) -> AppResult<()> {
        let scope = Scope::Platform;
        let txn = self.db.begin_write().await?;
        if self.db.is_postgres() {
            store::execute(
                &txn,
                "SELECT pg_advisory_xact_lock_shared(hashtext('tollgate.plans'))",
                vec![],
            )
            .await?;
        }
        if store::ledger::lock_period(&txn, scope, org, period)
            .await?
            .is_none()
        {
            return Ok(());
        }
        let Some(current) = store::orgs::find(&txn, scope, org).await? else {
            return Ok(()); // gone meanwhile: nothing to index
        };
        let rules = plan_rules(&txn, current.plan_id).await?;
        self.write_state_in(&txn, scope, org, period, &rules)
            .await?;
        txn.commit().await?;
        Ok(())
    }

    /// Materializes `period`'s index for every organization (every status: the pages show them
    /// all), then the organizations still without a period row, then marks the period complete.
    /// Idempotent, and safe to run on several replicas at once. Answers the organizations written
    /// (0 when the period was already complete).
    pub async fn materialize_period(&self, period: Period) -> AppResult<usize> {
        if self.index_complete(period).await? {
            return Ok(0);
        }
        // The base handle: platform scope (row-level security lets it see every organization).
        let db = &self.db;
        let mut written = 0;
        for org in store::utilization::all_org_ids(db, Scope::Platform).await? {
            self.index_org(org, period).await?;
            written += 1;
        }
        // Created meanwhile by a change that computed its period a moment before this one started.
        for org in store::utilization::orgs_without_period_row(db, Scope::Platform, period).await? {
            self.index_org(org, period).await?;
            written += 1;
        }
        store::utilization::mark_indexed(db.pool(), period).await?;
        self.indexed_period
            .store(period.start.num_days_from_ce(), Ordering::Relaxed);
        Ok(written)
    }

    /// Whether `period`'s index is complete for every organization (remembered once seen).
    pub async fn index_complete(&self, period: Period) -> AppResult<bool> {
        let day = period.start.num_days_from_ce();
        if self.indexed_period.load(Ordering::Relaxed) == day {
            return Ok(true);
        }
        // Through the caller's handle (a request's read transaction), not a second connection
        // from the pool: requests that each hold one and wait for another would starve the pool.
        let done = store::utilization::period_indexed(&self.db, period).await?;
        if done {
            self.indexed_period.store(day, Ordering::Relaxed);
        }
        Ok(done)
    }

    /// The state of a new organization in the current period, in its creation's transaction.
    pub(crate) async fn index_new_org(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        org: OrganizationId,
        plan_id: Option<Uuid>,
    ) -> AppResult<()> {
        let period = Period::current();
        if self.db.is_postgres() {
            // As in `index_org`: a concurrent upsertPlan runs wholly before or after.
            store::execute(
                txn,
                "SELECT pg_advisory_xact_lock_shared(hashtext('tollgate.plans'))",
                vec![],
            )
            .await?;
        }
        if store::ledger::lock_period(txn, scope, org, period)
            .await?
            .is_none()
        {
            return Ok(());
        }
        let rules = plan_rules(txn, plan_id).await?;
        self.write_state_in(txn, scope, org, period, &rules).await
    }
}

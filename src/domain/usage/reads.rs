//! Reads: entitlement checks and summaries (from counters and the entitlement cache).

use super::*;

impl Engine {
    /// checkEntitlement: the same rules as a recording, recording nothing.
    pub async fn check(
        &self,
        viewer: &Viewer,
        org_id: Option<&str>,
        metric: &str,
        quantity: Option<Decimal>,
    ) -> AppResult<(MetricUsage, Decimal, bool, Option<String>)> {
        let org = access::target_org(viewer, org_id)?;
        let summary = self.current_summary(viewer, org).await?;
        let code = MetricCode::parse(metric)?;
        let qty = Amount::parse("quantity", quantity.unwrap_or(Decimal::ONE))?;
        if qty.is_negative() {
            return Err(AppError::bad_input("quantity must be 0 or more"));
        }
        let usage = summary
            .metrics
            .iter()
            .find(|m| m.metric == code.as_str())
            .cloned()
            .ok_or_else(|| AppError::bad_input(format!("unknown metric {metric:?}")))?;
        // `quantity` more, as the contract asks, for either kind: for a GAUGE (venues, staff) the
        // question a client asks is whether one more (a new venue) fits.
        let new_used = usage.state.used() + qty.to_decimal();
        let refused = usage.state.refuses(new_used);
        let reason = refused.then(|| {
            format!(
                "HARD limit: {} would reach {} of an allowance of {}",
                code.as_str(),
                new_used.normalize(),
                usage.state.allowance().unwrap_or_default().normalize()
            )
        });
        Ok((usage, new_used, !refused, reason))
    }

    /// The cached current-period summary of `org`, when `scope` may see it.
    pub fn cached_summary(&self, scope: Scope, org: OrganizationId) -> Option<Arc<UsageSummary>> {
        scope.allows(org).then(|| self.cache.get(org)).flatten()
    }

    /// The cached summary of `org`, when the viewer may read it (as `access::authorize` would allow).
    fn cached_for(&self, viewer: &Viewer, org: OrganizationId) -> Option<Arc<UsageSummary>> {
        access::role_allows(viewer, Action::Read)
            .then(|| self.cached_summary(viewer.scope(), org))
            .flatten()
    }

    /// An organization the viewer may read, from the cache when it holds it (the same answers as
    /// `access::authorize`: a foreign or missing organization is NOT_FOUND).
    pub async fn readable_org(
        &self,
        viewer: &Viewer,
        org: OrganizationId,
    ) -> AppResult<organization::Model> {
        if let Some(s) = self.cached_for(viewer, org) {
            return Ok(s.org.clone());
        }
        access::authorize(&self.db, viewer, org, Action::Read).await
    }

    /// The current period's summary of an organization the viewer may read, from the cache or read
    /// (and cached).
    pub async fn current_summary(
        &self,
        viewer: &Viewer,
        org: OrganizationId,
    ) -> AppResult<Arc<UsageSummary>> {
        if let Some(s) = self.cached_for(viewer, org) {
            return Ok(s);
        }
        let ticket = self.cache.ticket(org);
        let model = access::authorize(&self.db, viewer, org, Action::Read).await?;
        let summary = self
            .summaries(&self.db, viewer.scope(), vec![model], Period::current())
            .await?
            .into_iter()
            .next()
            .map(Arc::new)
            .ok_or_else(|| AppError::not_found("organization"))?;
        if let Some(t) = ticket {
            self.cache.put(t, summary.clone());
        }
        Ok(summary)
    }

    /// Summaries of organizations (already scoped and loaded) in a period.
    pub async fn summaries<C: ConnectionTrait>(
        &self,
        db: &C,
        scope: Scope,
        orgs: Vec<organization::Model>,
        period: Period,
    ) -> AppResult<Vec<UsageSummary>> {
        let ids: Vec<OrganizationId> = orgs.iter().map(|o| OrganizationId(o.id)).collect();
        let catalog = self.catalog().await?;
        let kinds = &catalog.kinds;
        let counters = store::ledger::counters(db, scope, &ids, period).await?;
        let rows = store::ledger::period_rows(db, scope, &ids, period).await?;
        let mut plan_ids: Vec<Uuid> = orgs.iter().filter_map(|o| o.plan_id).collect();
        plan_ids.sort();
        plan_ids.dedup();
        let limits = store::catalog::limits_for_plans(db, &plan_ids).await?;
        let mut by_plan: HashMap<Uuid, HashMap<String, LimitRule>> = HashMap::new();
        for l in &limits {
            by_plan
                .entry(l.plan_id)
                .or_default()
                .insert(l.metric_code.clone(), limit_rule(l));
        }
        let empty = HashMap::new();
        Ok(orgs
            .into_iter()
            .map(|org| {
                let mine: Vec<_> = counters
                    .iter()
                    .filter(|c| c.organization_id == org.id)
                    .cloned()
                    .collect();
                let rules = org.plan_id.and_then(|p| by_plan.get(&p)).unwrap_or(&empty);
                let row_updated_at = rows
                    .iter()
                    .filter(|r| r.organization_id == org.id)
                    .map(|r| r.updated_at)
                    .max();
                summary_from(period, kinds, rules, org, &mine, row_updated_at)
            })
            .collect())
    }

    /// Organizations' summaries in one statement (`store::ledger::usage_states`), exactly as
    /// `summaries` builds them; those missing or out of scope are absent.
    pub async fn summaries_of<C: ConnectionTrait>(
        &self,
        db: &C,
        scope: Scope,
        orgs: &[OrganizationId],
        period: Period,
    ) -> AppResult<HashMap<OrganizationId, UsageSummary>> {
        let catalog = self.catalog().await?;
        let states = store::ledger::usage_states(db, scope, orgs, period).await?;
        Ok(states
            .into_iter()
            .map(|(id, state)| {
                let summary = summary_from(
                    period,
                    &catalog.kinds,
                    &rules_by_metric(&state.limits),
                    state.org,
                    &state.counters,
                    state.row_updated_at,
                );
                (id, summary)
            })
            .collect())
    }
}

/// A summary from an organization's counters in the period, its plan's rules, and when its period
/// row last changed.
fn summary_from(
    period: Period,
    kinds: &HashMap<String, MetricKind>,
    rules: &HashMap<String, LimitRule>,
    org: organization::Model,
    counters: &[entity::usage_counter::Model],
    row_updated_at: Option<DateTime<Utc>>,
) -> UsageSummary {
    let metrics = states_from(period, kinds, rules, counters);
    // A recording moves its counter and writes the period row only when the flags change: the
    // summary changed when either last did.
    let updated_at = row_updated_at
        .into_iter()
        .chain(
            counters
                .iter()
                .filter(|c| c.period_start == period.start)
                .map(|c| c.updated_at),
        )
        .max();
    UsageSummary {
        org,
        period,
        metrics,
        updated_at,
    }
}

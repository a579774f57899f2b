//! Limit evaluation: a period's flags (the seed's JSON) and the alerts whose conditions hold.

use super::*;

impl Engine {
    /// After a plan's limits change: re-evaluates the current period of every organization on the
    /// plan that has one (the stored flags follow the new limits, and alerts whose conditions now
    /// hold are raised; not re-armed, as the organizations keep their plan). Organizations are taken
    /// in id order, so two such transactions cannot lock them in opposite orders.
    pub(crate) async fn reevaluate_plan(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        plan_id: Uuid,
    ) -> AppResult<Vec<(OrganizationId, Vec<usage_alert::Model>)>> {
        let period = Period::current();
        let orgs = store::ledger::orgs_in_period_on_plan(txn, plan_id, period).await?;
        let rules = plan_rules(txn, Some(plan_id)).await?;
        let mut out = Vec::with_capacity(orgs.len());
        for org in orgs {
            let Some(epoch) = store::ledger::lock_period(txn, scope, org, period).await? else {
                continue;
            };
            let alerts = self
                .reevaluate(txn, scope, org, period, epoch, &rules, None)
                .await?;
            out.push((org, alerts));
        }
        Ok(out)
    }

    /// Re-reads the period's counters, writes the seed's flags, and inserts the alerts whose conditions
    /// now hold (for one metric, or all). Answers the alerts that are new.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn reevaluate(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        org: OrganizationId,
        period: Period,
        epoch: i32,
        rules: &HashMap<String, LimitRule>,
        only_metric: Option<&str>,
    ) -> AppResult<Vec<usage_alert::Model>> {
        let catalog = self.catalog().await?;
        let kinds = &catalog.kinds;
        let counters = store::ledger::counters(txn, scope, &[org], period).await?;
        let states = states_from(period, kinds, rules, &counters);
        let state = period_state(&states);
        store::utilization::write_period_state(txn, scope, org, period, &state).await?;
        self.carry_into_current(txn, scope, org, period, rules, only_metric)
            .await?;
        let mut new_alerts = Vec::new();
        for m in states
            .iter()
            .filter(|m| only_metric.is_none_or(|only| only == m.metric))
        {
            for kind in m.state.alert_conditions(self.near_limit_pct) {
                let alert = usage_alert::Model {
                    organization_id: org.0,
                    id: Uuid::now_v7(),
                    metric_code: m.metric.clone(),
                    kind,
                    period_start: period.start,
                    alert_epoch: epoch,
                    threshold_pct: Amount::parse(
                        "threshold",
                        threshold_for(kind, self.near_limit_pct),
                    )?
                    .scaled(),
                    used: m.state.used.scaled(),
                    allowance: Amount::parse("allowance", m.state.allowance().unwrap_or_default())?
                        .scaled(),
                    utilization_pct: Amount::parse(
                        "utilization",
                        m.state.utilization().unwrap_or_default(),
                    )?
                    .scaled(),
                    created_at: Utc::now(),
                };
                if let Some(a) = store::ledger::insert_alert(txn, scope, alert).await? {
                    new_alerts.push(a);
                }
            }
        }
        Ok(new_alerts)
    }

    /// Re-evaluates every metric of the current period after a plan change (alerts re-armed).
    pub async fn rearm_and_reevaluate(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        org: OrganizationId,
        plan_id: Option<Uuid>,
    ) -> AppResult<Vec<usage_alert::Model>> {
        let period = Period::current();
        store::ledger::lock_period(txn, scope, org, period).await?;
        store::ledger::rearm_alerts(txn, scope, org, period).await?;
        let epoch = store::ledger::lock_period(txn, scope, org, period)
            .await?
            .unwrap_or(0);
        let rules = plan_rules(txn, plan_id).await?;
        self.reevaluate(txn, scope, org, period, epoch, &rules, None)
            .await
    }
}

/// What the period row and the utilization index say about these states (`write_period_state`).
pub fn period_state(states: &[MetricUsage]) -> store::utilization::PeriodState {
    let per_metric: Vec<store::utilization::MetricIndex> = states
        .iter()
        .filter_map(|m| {
            m.state
                .utilization_ratio()
                .map(|u| store::utilization::MetricIndex {
                    metric: m.metric.clone(),
                    utilization_pct: u,
                    exceeded: m.state.exceeded(),
                })
        })
        .collect();
    store::utilization::PeriodState {
        exceeded: states.iter().any(|m| m.state.exceeded()),
        details: exceeded_details(states.iter().map(|m| (m.metric.as_str(), &m.state))),
        peak: per_metric
            .iter()
            .map(|m| m.utilization_pct)
            .reduce(f64::max),
        per_metric,
    }
}

fn threshold_for(kind: AlertKind, near: Decimal) -> Decimal {
    match kind {
        AlertKind::NearLimit => near,
        AlertKind::LimitExceeded | AlertKind::OverageStarted => Decimal::ONE_HUNDRED,
    }
}

//! Limit evaluation: a period's flags (the seed's JSON) and the alerts whose conditions hold.

use super::*;

impl Engine {
    /// After a plan's limits change: re-evaluates the current period of every organization on the
    /// plan that has one (the stored flags follow the new limits, and alerts whose conditions now
    /// hold are raised; not re-armed, as the organizations keep their plan). Organizations are taken
    /// in the global lock order, so no two transactions lock them in opposite orders.
    pub(crate) async fn reevaluate_plan(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        plan_id: Uuid,
    ) -> AppResult<Vec<(OrganizationId, Vec<usage_alert::Model>)>> {
        let period = Period::current();
        let mut orgs = store::ledger::orgs_in_period_on_plan(txn, plan_id, period).await?;
        // The global lock order (`store::recording::lock_key`): no two writers deadlock.
        orgs.sort_by_key(|o| store::recording::lock_key(*o));
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
        let details = exceeded_details(states.iter().map(|m| (m.metric.as_str(), &m.state)));
        let exceeded = states.iter().any(|m| m.state.exceeded());
        store::ledger::write_flags(txn, scope, org, period, exceeded, details).await?;
        let mut alerts = Vec::new();
        for m in states
            .iter()
            .filter(|m| only_metric.is_none_or(|only| only == m.metric))
        {
            for kind in m.state.alert_conditions(self.near_limit_pct) {
                alerts.push(self.alert_model(org, period, epoch, m, kind)?);
            }
        }
        Ok(store::recording::insert_alerts(txn, scope, alerts, None, |_| String::new()).await?)
    }

    /// After a recording moved one metric's counter: its flags (`write_flags_after`), then the
    /// metric's alerts that hold and did not fire yet in the epoch, in one insert.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn evaluate_recorded(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        org: OrganizationId,
        period: Period,
        view: &store::recording::RecordingView,
        rules: &HashMap<String, LimitRule>,
        usage: &MetricUsage,
        announce: bool,
    ) -> AppResult<Vec<usage_alert::Model>> {
        let epoch = self
            .write_flags_after(txn, scope, org, period, view, rules, usage)
            .await?;
        let mut alerts = Vec::new();
        for kind in usage.state.alert_conditions(self.near_limit_pct) {
            if !view.fired.contains(&kind) {
                alerts.push(self.alert_model(org, period, epoch, usage, kind)?);
            }
        }
        self.insert_new_alerts(txn, scope, org, alerts, announce)
            .await
    }

    /// Inserts alerts that did not fire yet (one statement, with their NOTIFYs when `announce`).
    pub(super) async fn insert_new_alerts(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        org: OrganizationId,
        alerts: Vec<usage_alert::Model>,
        announce: bool,
    ) -> AppResult<Vec<usage_alert::Model>> {
        if alerts.is_empty() {
            return Ok(alerts);
        }
        let channel = announce.then_some(crate::alerts::CHANNEL);
        Ok(
            store::recording::insert_alerts(txn, scope, alerts, channel, |a| {
                crate::alerts::encode_alert(org, a)
            })
            .await?,
        )
    }

    /// The flags after a recording moved one metric's counter to `usage`: only that metric's entry
    /// can change (written only when it did); the period's first change evaluates every metric (a
    /// GAUGE carries its earlier reading) and creates the period row. Answers the alert epoch.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn write_flags_after(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        org: OrganizationId,
        period: Period,
        view: &store::recording::RecordingView,
        rules: &HashMap<String, LimitRule>,
        usage: &MetricUsage,
    ) -> AppResult<i32> {
        Ok(match &view.period {
            Some(row) => {
                let mut details = row.details.as_object().cloned().unwrap_or_default();
                let before = details.get(&usage.metric).cloned();
                let entry = exceeded_details([(usage.metric.as_str(), &usage.state)]);
                match entry.get(&usage.metric) {
                    Some(e) => details.insert(usage.metric.clone(), e.clone()),
                    None => details.remove(&usage.metric),
                };
                let exceeded = !details.is_empty();
                if before.as_ref() != details.get(&usage.metric) || exceeded != row.exceeded {
                    store::ledger::write_flags(
                        txn,
                        scope,
                        org,
                        period,
                        exceeded,
                        serde_json::Value::Object(details),
                    )
                    .await?;
                }
                row.epoch
            }
            None => {
                let catalog = self.catalog().await?;
                let counters = store::ledger::counters(txn, scope, &[org], period).await?;
                let states = states_from(period, &catalog.kinds, rules, &counters);
                let details =
                    exceeded_details(states.iter().map(|m| (m.metric.as_str(), &m.state)));
                let exceeded = states.iter().any(|m| m.state.exceeded());
                store::recording::write_period(txn, scope, org, period, exceeded, details)
                    .await?
                    .unwrap_or(0)
            }
        })
    }

    /// The alert of `kind` for a metric's state.
    pub(super) fn alert_model(
        &self,
        org: OrganizationId,
        period: Period,
        epoch: i32,
        m: &MetricUsage,
        kind: AlertKind,
    ) -> AppResult<usage_alert::Model> {
        Ok(usage_alert::Model {
            organization_id: org.0,
            id: Uuid::now_v7(),
            metric_code: m.metric.clone(),
            kind,
            period_start: period.start,
            alert_epoch: epoch,
            threshold_pct: Amount::parse("threshold", threshold_for(kind, self.near_limit_pct))?
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
        })
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

fn threshold_for(kind: AlertKind, near: Decimal) -> Decimal {
    match kind {
        AlertKind::NearLimit => near,
        AlertKind::LimitExceeded | AlertKind::OverageStarted => Decimal::ONE_HUNDRED,
    }
}

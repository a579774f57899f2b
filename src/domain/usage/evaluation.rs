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
        let state = period_state(&states);
        store::utilization::write_period_state(txn, scope, org, period, &state).await?;
        self.carry_into_current(txn, scope, org, period, rules, only_metric)
            .await?;
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

    /// After a recording moved one metric's counter (its statement wrote `change`, the index row
    /// and the period row, when known): the rest of its flags (`write_flags_after`), then the
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
        change: Option<&store::recording::IndexChange>,
        announce: bool,
    ) -> AppResult<Vec<usage_alert::Model>> {
        let epoch = self
            .write_flags_after(txn, scope, org, period, view, rules, usage, change, true)
            .await?;
        let mut alerts = Vec::new();
        for kind in usage.state.alert_conditions(self.near_limit_pct) {
            if !view.fired.contains(&kind) {
                alerts.push(self.alert_model(org, period, epoch, usage, kind)?);
            }
        }
        self.insert_new_alerts(txn, scope, alerts, announce).await
    }

    /// Inserts alerts that did not fire yet, of one organization or several (a wave's): one
    /// statement, with each one's NOTIFY, to its own organization's subscribers, when `announce`.
    pub(super) async fn insert_new_alerts(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        alerts: Vec<usage_alert::Model>,
        announce: bool,
    ) -> AppResult<Vec<usage_alert::Model>> {
        if alerts.is_empty() {
            return Ok(alerts);
        }
        let channel = announce.then_some(crate::alerts::CHANNEL);
        Ok(
            store::recording::insert_alerts(txn, scope, alerts, channel, |a| {
                crate::alerts::encode_alert(OrganizationId(a.organization_id), a)
            })
            .await?,
        )
    }

    /// Whether the period row of a view was written whole (created, materialized or re-evaluated
    /// under this plan): its peak is set (or the plan limits nothing) and the metric under `rule`
    /// has its index row when limited. Then a recording changes only the recorded metric's part.
    pub(super) fn period_row_whole(
        view: &store::recording::RecordingView,
        rule: &LimitRule,
    ) -> bool {
        let limits_nothing = view.limits.values().all(|l| l.included.is_none());
        let limited = rule.included.is_some();
        view.period.as_ref().is_some_and(|row| {
            (row.peak.is_some() || limits_nothing) && (!limited || view.indexed.is_some())
        })
    }

    /// What a recording that moved one metric to `usage` changes in the period row (flags, peak) and
    /// the metric's index row; None when the period row's state was not written whole yet (then the
    /// whole state is written: `write_flags_after`). Decided from the read under the lock.
    pub(super) fn index_change(
        view: &store::recording::RecordingView,
        usage: &MetricUsage,
    ) -> Option<store::recording::IndexChange> {
        use store::recording::Peak;
        if !Self::period_row_whole(view, &usage.state.rule) {
            return None;
        }
        let row = view.period.as_ref()?;
        let mut details = row.details.as_object().cloned().unwrap_or_default();
        let before = details.get(&usage.metric).cloned();
        let entry = exceeded_details([(usage.metric.as_str(), &usage.state)]);
        match entry.get(&usage.metric) {
            Some(e) => details.insert(usage.metric.clone(), e.clone()),
            None => details.remove(&usage.metric),
        };
        let exceeded = !details.is_empty();
        let changed = before.as_ref() != details.get(&usage.metric) || exceeded != row.exceeded;
        let flags = changed.then_some((exceeded, serde_json::Value::Object(details)));
        let index = usage
            .state
            .utilization_ratio()
            .map(|u| (u, usage.state.exceeded()));
        let peak = match (index, row.peak) {
            (None, _) => Peak::Keep,
            (Some((u, _)), Some(old)) if u > old => Peak::Set(u),
            (Some((u, _)), Some(old)) => match view.indexed {
                // The metric was the peak and went down (a GAUGE reading).
                Some((was, _)) if was >= old && u < was => Peak::Highest,
                _ => Peak::Keep,
            },
            (Some((u, _)), None) => Peak::Set(u),
        };
        Some(store::recording::IndexChange {
            index: index.filter(|i| Some(*i) != view.indexed),
            flags,
            peak,
        })
    }

    /// The period's state after a recording moved one metric to `usage`: `change` when it is known
    /// (written here unless the recording's own statement already did, `written`), otherwise the
    /// whole state (the period row is created if needed). A GAUGE moved in an earlier period moves
    /// what the current period carries too. Answers the alert epoch.
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
        change: Option<&store::recording::IndexChange>,
        written: bool,
    ) -> AppResult<i32> {
        let epoch = match (change, &view.period) {
            (Some(change), Some(row)) => {
                if !written {
                    store::recording::write_metric_state(
                        txn,
                        scope,
                        org,
                        period,
                        &usage.metric,
                        change,
                    )
                    .await?;
                }
                row.epoch
            }
            _ => {
                let epoch = store::ledger::lock_period(txn, scope, org, period)
                    .await?
                    .unwrap_or(0);
                self.write_state_in(txn, scope, org, period, rules).await?;
                epoch
            }
        };
        self.carry_into_current(txn, scope, org, period, rules, Some(&usage.metric))
            .await?;
        Ok(epoch)
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

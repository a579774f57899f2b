//! A run of a batch: its recordings of one COUNTER of one organization in one period, applied in
//! multi-row statements. Under the organization's lock, one read answers for the whole run; each
//! recording is then decided in order in memory (its replay, its HARD refusal, its alerts), exactly as
//! one recording after another would be; then one counter upsert adds the accepted total (its HARD
//! cap checked again in the statement), one insert appends the run's events, the flags are written
//! once if they changed, and the new alerts go in one insert.

use super::recording::{hard_cap, usage_event};
use super::*;

impl Engine {
    pub(super) async fn record_run(
        &self,
        txn: &DatabaseTransaction,
        viewer: &Viewer,
        run: &[&ParsedRecord],
        in_group: bool,
    ) -> AppResult<Vec<RecordOutcome>> {
        let [first, ..] = run else {
            return Ok(vec![]);
        };
        if run.len() == 1 || first.kind != MetricKind::Counter {
            let mut out = Vec::with_capacity(run.len());
            for p in run {
                out.push(self.record_in(txn, viewer, p, in_group).await?);
            }
            return Ok(out);
        }
        let scope = viewer.scope();
        let org = first.org;
        let period = Period::of_instant(first.occurred_at);
        let metric = first.metric.as_str();
        let keys: Vec<&str> = run.iter().filter_map(|p| p.key.as_deref()).collect();
        let (view, rules) = self
            .locked_view(txn, scope, org, period, metric, &keys, in_group)
            .await?;
        let rule = rules.get(metric).copied().unwrap_or(LimitRule::UNLIMITED);
        let hard_cap = hard_cap(&rule);
        let epoch = view.period.as_ref().map_or(0, |p| p.epoch);
        let (mut used, credits) = view.counter.unwrap_or((0, 0));
        let state = |used: i64| MetricState {
            used: Amount::from_scaled(used),
            credits: Amount::from_scaled(credits),
            rule,
        };
        let mut fired = view.fired.clone();
        let mut events: Vec<usage_event::Model> = Vec::new();
        let mut outcomes: Vec<RecordOutcome> = Vec::with_capacity(run.len());
        let mut total: i64 = 0;
        let now = Utc::now();
        for p in run {
            let amount = p.quantity.scaled();
            if let Some(key) = p.key.as_deref() {
                // A key of an earlier recording of this run, or of the ledger: a replay, or the
                // client's mistake.
                let earlier = match events
                    .iter()
                    .find(|e| e.idempotency_key.as_deref() == Some(key))
                {
                    Some(e) => Some(e.clone()),
                    None if view.taken.iter().any(|t| t == key) => Some(
                        store::ledger::event_by_key(txn, scope, org, key)
                            .await?
                            .ok_or_else(|| {
                                AppError::internal(anyhow::anyhow!("a taken key has no event"))
                            })?,
                    ),
                    None => None,
                };
                if let Some(e) = earlier {
                    if e.metric_code != metric || e.quantity != amount {
                        return Err(super::recording::reused_key(key, &e));
                    }
                    let outcome = if e.period_start == period.start {
                        RecordOutcome {
                            accepted: true,
                            duplicate: true,
                            usage: MetricUsage {
                                metric: metric.to_owned(),
                                state: state(used),
                            },
                            event: Some(e),
                            alerts: vec![],
                            rejection_reason: None,
                        }
                    } else {
                        self.duplicate(txn, scope, org, e, rule).await?
                    };
                    outcomes.push(outcome);
                    continue;
                }
            }
            let Some(next) = used.checked_add(amount) else {
                return Err(
                    sea_orm::DbErr::Custom(store::ledger::COUNTER_OVERFLOW.to_owned()).into(),
                );
            };
            if hard_cap.is_some_and(|cap| next - credits > cap) {
                let usage = MetricUsage {
                    metric: metric.to_owned(),
                    state: state(used),
                };
                outcomes.push(super::recording::refusal(p, usage));
                continue;
            }
            used = next;
            total += amount;
            let event = usage_event(viewer, p, period, now);
            events.push(event.clone());
            let usage = MetricUsage {
                metric: metric.to_owned(),
                state: state(used),
            };
            let mut alerts = Vec::new();
            for kind in usage.state.alert_conditions(self.near_limit_pct) {
                if !fired.contains(&kind) {
                    fired.push(kind);
                    alerts.push(self.alert_model(org, period, epoch, &usage, kind)?);
                }
            }
            outcomes.push(RecordOutcome {
                accepted: true,
                duplicate: false,
                event: Some(event),
                usage,
                alerts,
                rejection_reason: None,
            });
        }
        if events.is_empty() {
            return Ok(outcomes);
        }
        let announce = in_group && self.db.is_postgres();
        let notify = announce.then(|| (crate::alerts::CHANNEL, crate::alerts::encode_usage(org)));
        let Some((stored, stored_credits)) = store::recording::add_to_counter(
            txn, scope, org, period, metric, total, hard_cap, notify,
        )
        .await?
        else {
            return Err(AppError::internal(anyhow::anyhow!(
                "the counter refused what its lock's view allowed"
            )));
        };
        if (stored, stored_credits) != (used, credits) {
            return Err(AppError::internal(anyhow::anyhow!(
                "the counter moved under its lock"
            )));
        }
        if store::recording::insert_events(txn, scope, &events).await? != events.len() as u64 {
            // Taken by a writer outside the lock: the caller undoes the transaction.
            return Err(AppError::conflict(
                "an idempotency key was used concurrently; retry",
            ));
        }
        let last = MetricUsage {
            metric: metric.to_owned(),
            state: state(used),
        };
        let change = Self::index_change(&view, &last);
        self.write_flags_after(
            txn,
            scope,
            org,
            period,
            &view,
            &rules,
            &last,
            change.as_ref(),
            false,
        )
        .await?;
        let alerts: Vec<usage_alert::Model> = outcomes
            .iter()
            .flat_map(|o| o.alerts.iter().cloned())
            .collect();
        let inserted = self
            .insert_new_alerts(txn, scope, org, alerts, announce)
            .await?;
        for o in &mut outcomes {
            o.alerts.retain(|a| inserted.iter().any(|i| i.id == a.id));
        }
        Ok(outcomes)
    }
}

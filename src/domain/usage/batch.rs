//! A run of a batch: its recordings of one metric of one organization in one period. Under the
//! organization's lock, one read answers for the whole run, and `plan_run` decides each recording in
//! order in memory (its replay, its HARD refusal, its alerts), exactly as one recording after another
//! would be. `record_run` then writes a COUNTER's run alone: one counter upsert adds the accepted
//! total (its HARD cap checked again in the statement), one insert appends the run's events, the
//! flags are written once if they changed, and the new alerts go in one insert. A group writes the
//! runs of several organizations together (`wave`).

use super::recording::{counter_overflow, hard_cap, passes_cap, usage_event};
use super::*;

/// A run decided under its organization's lock, before anything of it is written.
pub(super) struct RunPlan {
    /// Each recording's answer, in the run's order (the alerts are those not fired yet; the caller
    /// keeps those its insert wrote).
    pub outcomes: Vec<RecordOutcome>,
    /// The ledger events of the accepted recordings.
    pub events: Vec<usage_event::Model>,
    /// The counter's `used` once they are applied (as read when none is).
    pub used: i64,
    pub credits: i64,
    /// The metric's state once they are applied.
    pub last: MetricUsage,
}

/// Whether one read under the lock answers for the whole run (`record_run`): a single recording, or
/// a COUNTER's run. A GAUGE's readings each read what the one before wrote.
fn read_once(run: &[&ParsedRecord]) -> bool {
    run.len() == 1 || run.first().is_some_and(|p| p.kind == MetricKind::Counter)
}

impl Engine {
    /// Applies a run. `ahead`: its view, already read in this transaction after every write the run
    /// must see (a SQLite group reads its runs' views together, `group`), only where the transaction
    /// itself is the lock (SQLite's write lock). A run that does not `read_once` reads its own.
    pub(super) async fn record_run(
        &self,
        txn: &DatabaseTransaction,
        viewer: &Viewer,
        run: &[&ParsedRecord],
        in_group: bool,
        ahead: Option<store::recording::RecordingView>,
    ) -> AppResult<Vec<RecordOutcome>> {
        let [first, ..] = run else {
            return Ok(vec![]);
        };
        let mut ahead = ahead.filter(|_| read_once(run));
        if run.len() == 1 || first.kind != MetricKind::Counter {
            let mut out = Vec::with_capacity(run.len());
            for p in run {
                out.push(
                    self.record_in(txn, viewer, p, in_group, ahead.take())
                        .await?,
                );
            }
            return Ok(out);
        }
        let scope = viewer.scope();
        let org = first.org;
        let period = Period::of_instant(first.occurred_at);
        let metric = first.metric.as_str();
        let keys: Vec<&str> = run.iter().filter_map(|p| p.key.as_deref()).collect();
        let (view, rules) = self
            .locked_view(txn, scope, org, period, metric, &keys, in_group, ahead)
            .await?;
        let rule = rules.get(metric).copied().unwrap_or(LimitRule::UNLIMITED);
        let RunPlan {
            mut outcomes,
            events,
            used,
            credits,
            last,
        } = self.plan_run(txn, viewer, run, &view, &rules, rule).await?;
        if events.is_empty() {
            return Ok(outcomes);
        }
        let total = used
            .checked_sub(view.counter.map_or(0, |c| c.0))
            .ok_or_else(counter_overflow)?;
        let announce = in_group && self.db.is_postgres();
        let notify = announce.then(|| (crate::alerts::CHANNEL, crate::alerts::encode_usage(org)));
        let Some(stored) = store::recording::add_to_counter(
            txn,
            scope,
            org,
            period,
            metric,
            total,
            hard_cap(&rule),
            notify,
        )
        .await?
        else {
            return Err(AppError::internal(anyhow::anyhow!(
                "the counter refused what its lock's view allowed"
            )));
        };
        if stored != (used, credits) {
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
        let inserted = self.insert_new_alerts(txn, scope, alerts, announce).await?;
        keep_inserted(&mut outcomes, &inserted);
        Ok(outcomes)
    }

    /// Decides a run's recordings in order from its view (read under the organization's lock),
    /// writing nothing: a key of an earlier recording of the run or of the ledger is a replay (or the
    /// client's mistake, an error), a HARD limit refuses what would pass it, and an accepted recording
    /// moves the metric (a COUNTER adds, a GAUGE reading replaces) and raises the alerts that did not
    /// fire yet in the period's epoch. A replay or refusal may read (the first event, an earlier
    /// state).
    pub(super) async fn plan_run(
        &self,
        txn: &DatabaseTransaction,
        viewer: &Viewer,
        run: &[&ParsedRecord],
        view: &store::recording::RecordingView,
        rules: &HashMap<String, LimitRule>,
        rule: LimitRule,
    ) -> AppResult<RunPlan> {
        let [first, ..] = run else {
            return Err(AppError::internal(anyhow::anyhow!("an empty run")));
        };
        let scope = viewer.scope();
        let org = first.org;
        let period = Period::of_instant(first.occurred_at);
        let metric = first.metric.as_str();
        let hard_cap = hard_cap(&rule);
        let epoch = view.period.as_ref().map_or(0, |p| p.epoch);
        let mut counter = view.counter;
        let (mut used, credits) = counter.unwrap_or((0, 0));
        let state = |used: i64| MetricState {
            used: Amount::from_scaled(used),
            credits: Amount::from_scaled(credits),
            rule,
        };
        let mut fired = view.fired.clone();
        let mut events: Vec<usage_event::Model> = Vec::new();
        let mut outcomes: Vec<RecordOutcome> = Vec::with_capacity(run.len());
        let now = Utc::now();
        for p in run {
            let amount = p.quantity.scaled();
            if let Some(key) = p.key.as_deref() {
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
                    // A replay adds nothing; the same key for another recording is the client's
                    // mistake, and answering `duplicate` would silently lose that recording.
                    if e.metric_code != metric || e.quantity != amount {
                        return Err(super::recording::reused_key(key, &e));
                    }
                    let outcome = if e.period_start == period.start && counter.is_some() {
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
            let next = super::recording::next_used(p, used)?;
            if passes_cap(hard_cap, next, credits) {
                // Nothing of this recording is written, and its key stays unused.
                let refused = self
                    .refused(txn, scope, period, p, rules, rule, counter)
                    .await?;
                outcomes.push(refused);
                continue;
            }
            used = next;
            counter = Some((used, credits));
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
        Ok(RunPlan {
            outcomes,
            events,
            used,
            credits,
            last: MetricUsage {
                metric: metric.to_owned(),
                state: state(used),
            },
        })
    }
}

/// Keeps in each answer the alerts that the insert wrote (one fired concurrently is not new).
pub(super) fn keep_inserted(outcomes: &mut [RecordOutcome], inserted: &[usage_alert::Model]) {
    for o in outcomes {
        o.alerts.retain(|a| inserted.iter().any(|i| i.id == a.id));
    }
}

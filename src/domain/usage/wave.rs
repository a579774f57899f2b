//! A wave of a group commit (`group`): runs of distinct organizations, applied together. One
//! statement reads every run's view (`store::recording::views`, under the locks the group took);
//! each run is decided in memory (`plan_run`), exactly as it would be alone; then the wave's writes go
//! in one statement (`store::group::write_wave`): the counters (each only if it still holds what was
//! read), the ledger's events, the utilization index, the period rows' peaks and flags (which change
//! with every recording of an organization over a limit: the details carry the actual use), and the
//! usage notifications of the organizations it changed. New alerts go in one more statement (rare: a
//! metric crosses a threshold), and so does a peak that went down (a GAUGE reading).
//!
//! A run whose period row is not written whole yet (its first recording in the period), or a GAUGE
//! reading in an earlier period (the current period may carry it), goes alone (`record_run`) after the
//! others: those write more than the wave's statements do.

use super::batch::{RunPlan, keep_inserted};
use super::group::GroupError;
use super::*;
use crate::store::group::{CounterWrite, PeriodWrite};
use crate::store::recording::{IndexChange, Peak, ViewAsk};

/// A run of a group: a job's recordings of one metric of one organization in one period.
pub(super) struct WaveRun<'a> {
    pub job: usize,
    pub viewer: &'a Viewer,
    pub items: Vec<&'a ParsedRecord>,
    /// Each item's place in its job.
    pub places: Vec<usize>,
}

impl WaveRun<'_> {
    pub(super) fn ask(&self) -> AppResult<ViewAsk<'_>> {
        let first = self
            .items
            .first()
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("an empty run")))?;
        Ok(ViewAsk {
            org: first.org,
            period: Period::of_instant(first.occurred_at),
            metric: first.metric.as_str(),
            keys: self.items.iter().filter_map(|p| p.key.as_deref()).collect(),
        })
    }
}

/// What a wave did: each run's answers, and whether a run that went alone set the transaction's
/// scope to its caller's (the group's must be set again before its next statement).
pub(super) struct WaveDone {
    pub outcomes: Vec<Vec<RecordOutcome>>,
    pub rescoped: bool,
}

impl Engine {
    /// Applies a wave inside the group's transaction, under the locks and scope the group took. A
    /// wave of one run goes with that run's own statements (fewer than the wave's).
    pub(super) async fn record_wave(
        &self,
        txn: &DatabaseTransaction,
        runs: &[&WaveRun<'_>],
    ) -> Result<WaveDone, GroupError> {
        if let [run] = runs {
            let outcomes = self
                .record_run(txn, run.viewer, &run.items, true, None)
                .await
                .map_err(|e| GroupError::Job(run.job, e))?;
            // Its statements set its caller's scope.
            return Ok(WaveDone {
                outcomes: vec![outcomes],
                rescoped: true,
            });
        }
        let group = |e: AppError| GroupError::Group(e);
        let asks = runs
            .iter()
            .map(|r| r.ask())
            .collect::<AppResult<Vec<_>>>()
            .map_err(group)?;
        let views = store::recording::views(txn, &asks)
            .await
            .map_err(|e| group(e.into()))?;
        let current = Period::current();
        let mut alone = Vec::new();
        let mut planned: Vec<(usize, store::recording::RecordingView, RunPlan)> = Vec::new();
        for (i, (run, view)) in runs.iter().zip(views).enumerate() {
            let job = |e: AppError| GroupError::Job(run.job, e);
            let ask = &asks[i];
            // Checked when queued; checked again, as every statement of the store does.
            let view = view
                .filter(|_| run.viewer.scope().allows(ask.org))
                .ok_or_else(|| job(AppError::not_found("organization")))?;
            let rules = recording::rules_of(&view);
            let rule = rules
                .get(ask.metric)
                .copied()
                .unwrap_or(LimitRule::UNLIMITED);
            let gauge_before = run.items[0].kind == MetricKind::Gauge && ask.period < current;
            if gauge_before || !Self::period_row_whole(&view, &rule) {
                alone.push(i);
                continue;
            }
            let plan = self
                .plan_run(txn, run.viewer, &run.items, &view, &rules, rule)
                .await
                .map_err(job)?;
            planned.push((i, view, plan));
        }

        let mut counters = Vec::new();
        // The wave's events, and each one's job.
        let mut events: Vec<usage_event::Model> = Vec::new();
        let mut event_jobs: Vec<usize> = Vec::new();
        let mut index = Vec::new();
        let mut periods = Vec::new();
        let mut states = Vec::new();
        let mut alerts = Vec::new();
        for (i, view, plan) in &mut planned {
            if plan.events.is_empty() {
                continue;
            }
            let ask = &asks[*i];
            counters.push(CounterWrite {
                org: ask.org,
                period: ask.period,
                metric: ask.metric,
                before: view.counter,
                used: plan.used,
            });
            event_jobs.extend(plan.events.iter().map(|_| runs[*i].job));
            // The answers hold their own copies.
            events.append(&mut plan.events);
            let change = Self::index_change(view, &plan.last).ok_or_else(|| {
                group(AppError::internal(anyhow::anyhow!(
                    "a period row written whole has no change"
                )))
            })?;
            if let Some((utilization, exceeded)) = change.index {
                index.push((ask.org, ask.period, ask.metric, utilization, exceeded));
            }
            match (change.flags, change.peak) {
                (None, Peak::Keep) => {}
                // The highest of the index rows, once the wave's are written (a GAUGE reading
                // lowered the peak).
                (flags, Peak::Highest) => states.push((
                    ask,
                    IndexChange {
                        index: None,
                        flags,
                        peak: Peak::Highest,
                    },
                )),
                (flags, peak) => periods.push(PeriodWrite {
                    org: ask.org,
                    period: ask.period,
                    peak: match peak {
                        Peak::Set(p) => Some(p),
                        _ => None,
                    },
                    flags,
                }),
            }
            alerts.extend(plan.outcomes.iter().flat_map(|o| o.alerts.iter().cloned()));
        }
        let db = |e: sea_orm::DbErr| group(e.into());
        // The wave announces its own usage changes with its writes (a run alone announces its
        // own; Postgres delivers a payload once per transaction).
        let payloads: Vec<String> = counters
            .iter()
            .map(|c| crate::alerts::encode_usage(c.org))
            .collect();
        let written = store::group::write_wave(
            txn,
            &store::group::WaveWrites {
                counters: &counters,
                events: &events,
                index: &index,
                periods: &periods,
                notify: (crate::alerts::CHANNEL, &payloads),
            },
        )
        .await
        .map_err(db)?;
        if !written.rows_held {
            return Err(group(AppError::internal(anyhow::anyhow!(
                "a counter or period row moved under its lock"
            ))));
        }
        if written.events != events.len() as u64 {
            // A key taken by a writer outside the lock: the job of the first event missing fails,
            // and the group runs again without it.
            let kept = store::group::events_present(txn, &events)
                .await
                .map_err(db)?;
            let job = events
                .iter()
                .zip(&event_jobs)
                .find(|(e, _)| !kept.contains(&e.id))
                .map_or(runs[0].job, |(_, job)| *job);
            return Err(GroupError::Job(
                job,
                AppError::conflict("an idempotency key was used concurrently; retry"),
            ));
        }
        for (ask, change) in &states {
            store::recording::write_metric_state(
                txn,
                Scope::Platform,
                ask.org,
                ask.period,
                ask.metric,
                change,
            )
            .await
            .map_err(db)?;
        }
        // Waves run on Postgres alone: each alert is announced with its insert.
        let inserted = self
            .insert_new_alerts(txn, Scope::Platform, alerts, true)
            .await
            .map_err(group)?;

        let mut outcomes: Vec<Option<Vec<RecordOutcome>>> = runs.iter().map(|_| None).collect();
        for (i, _, mut plan) in planned {
            keep_inserted(&mut plan.outcomes, &inserted);
            outcomes[i] = Some(plan.outcomes);
        }
        for &i in &alone {
            let run = &runs[i];
            let done = self
                .record_run(txn, run.viewer, &run.items, true, None)
                .await
                .map_err(|e| GroupError::Job(run.job, e))?;
            outcomes[i] = Some(done);
        }
        Ok(WaveDone {
            outcomes: outcomes
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect(),
            rescoped: !alone.is_empty(),
        })
    }
}

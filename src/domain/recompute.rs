//! Recompute (the seed's `record_organization_usage()` and its daily cron): rebuild the counters of
//! an organization from its ledger, report every difference, and repair them unless only checking.
//!
//! The ledger is the truth. A COUNTER's `used` in a period is the sum of its USAGE, ADJUSTMENT,
//! REVERSAL and RESET events there, its `credits` the sum of CREDIT events. A GAUGE replays its
//! events in recording order: a USAGE event sets the reading, the other kinds move it by their signed
//! quantity, and a period without a row of its own starts from the latest earlier reading, as the
//! recording path does.

use std::collections::{BTreeMap, HashMap};

use entity::enums::{MetricKind, UsageEventKind};

use super::usage::{Engine, plan_rules, states_from};
use super::{Amount, OrganizationId, Period, Scope};
use crate::error::{AppError, AppResult};
use crate::store;

/// One counter or flag that does not match the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub org: OrganizationId,
    pub period: Period,
    /// A metric code, or `flags` for the period row's has_exceeded_limits and details.
    pub subject: String,
    pub stored: String,
    pub expected: String,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}: stored {}, ledger says {}",
            self.org.0,
            self.period.start.format("%Y-%m"),
            self.subject,
            self.stored,
            self.expected
        )
    }
}

/// What one organization's recompute found (and repaired, unless checking).
#[derive(Debug, Default)]
pub struct OrgReport {
    pub counters: usize,
    pub differences: Vec<Difference>,
}

type Key = (Period, String);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Values {
    used: i64,
    credits: i64,
}

fn show(v: Values) -> String {
    let used = Amount::from_scaled(v.used).to_decimal().normalize();
    if v.credits == 0 {
        format!("used {used}")
    } else {
        let credits = Amount::from_scaled(v.credits).to_decimal().normalize();
        format!("used {used} credits {credits}")
    }
}

/// The counters the ledger implies: COUNTERs from SQL sums, GAUGEs replayed event by event.
fn expected_counters(
    sums: Vec<store::rebuild::LedgerSum>,
    gauge_events: Vec<entity::usage_event::Model>,
) -> BTreeMap<Key, Values> {
    let mut expected: BTreeMap<Key, Values> = BTreeMap::new();
    for s in sums {
        expected.insert(
            (Period::containing(s.period_start), s.metric_code),
            Values {
                used: s.used,
                credits: s.credits,
            },
        );
    }
    for e in gauge_events {
        let period = Period::containing(e.period_start);
        let key = (period, e.metric_code.clone());
        if !expected.contains_key(&key) {
            let carried = carry(&expected, period, &e.metric_code);
            expected.insert(
                key.clone(),
                Values {
                    used: carried,
                    credits: 0,
                },
            );
        }
        if let Some(v) = expected.get_mut(&key) {
            match e.kind {
                UsageEventKind::Usage => v.used = e.quantity,
                UsageEventKind::Credit => v.credits += e.quantity,
                UsageEventKind::Adjustment | UsageEventKind::Reversal | UsageEventKind::Reset => {
                    v.used += e.quantity
                }
            }
        }
    }
    expected
}

/// A GAUGE's latest reading before `period` (0 when there is none).
fn carry(values: &BTreeMap<Key, Values>, period: Period, metric: &str) -> i64 {
    values
        .iter()
        .rfind(|((p, m), _)| *p < period && m == metric)
        .map(|(_, v)| v.used)
        .unwrap_or(0)
}

impl Engine {
    /// Organizations for the daily run: every one that can still record usage.
    pub async fn recompute_targets(&self) -> AppResult<Vec<OrganizationId>> {
        use entity::enums::OrganizationStatus as S;
        Ok(store::orgs::ids_with_status(
            &self.db,
            Scope::Platform,
            &[S::Trialing, S::Active, S::PastDue],
        )
        .await?)
    }

    /// Rebuilds one organization's counters from its ledger (every period, or one period) and
    /// compares them with the stored counters and the current period's flags. With `repair`, the
    /// differences are written back and the repaired periods re-evaluated, in one transaction that
    /// holds the periods' locks, so concurrent recordings wait rather than interleave.
    pub async fn recompute_org(
        &self,
        org: OrganizationId,
        only: Option<Period>,
        repair: bool,
    ) -> AppResult<OrgReport> {
        let scope = Scope::Platform;
        let until = only.map(|p| p.start);
        let catalog = self.catalog().await?;
        let kinds = &catalog.kinds;
        let txn = self.db.begin_write().await?;
        let Some(current_org) = store::orgs::find(&txn, scope, org).await? else {
            return Err(AppError::not_found("organization"));
        };
        let mut periods = store::rebuild::periods_of(&txn, scope, org, until).await?;
        let now = Period::current();
        let check_flags = only.is_none_or(|p| p == now);
        if check_flags && !periods.contains(&now) {
            periods.push(now);
            periods.sort();
        }
        let mut epochs = HashMap::new();
        for p in &periods {
            let epoch = store::ledger::lock_period(&txn, scope, org, *p)
                .await?
                .unwrap_or(0);
            epochs.insert(*p, epoch);
        }
        let stored: BTreeMap<Key, Values> = store::rebuild::counter_rows(&txn, scope, org, until)
            .await?
            .into_iter()
            .filter(|c| periods.contains(&Period::containing(c.period_start)))
            .map(|c| {
                (
                    (Period::containing(c.period_start), c.metric_code),
                    Values {
                        used: c.used,
                        credits: c.credits,
                    },
                )
            })
            .collect();
        let sums = store::rebuild::counter_sums(&txn, scope, org, until).await?;
        let gauges = store::rebuild::gauge_events(&txn, scope, org, until).await?;
        let mut expected = expected_counters(
            sums.into_iter()
                .filter(|s| periods.contains(&Period::containing(s.period_start)))
                .collect(),
            gauges
                .into_iter()
                .filter(|e| periods.contains(&Period::containing(e.period_start)))
                .collect(),
        );
        // A stored row without events of its own: a COUNTER should be zero, a GAUGE should hold the
        // reading carried from before.
        for (period, metric) in stored.keys() {
            if !expected.contains_key(&(*period, metric.clone())) {
                let used = match kinds.get(metric) {
                    Some(MetricKind::Gauge) => carry(&expected, *period, metric),
                    _ => 0,
                };
                expected.insert((*period, metric.clone()), Values { used, credits: 0 });
            }
        }

        let mut report = OrgReport {
            counters: expected.len(),
            differences: Vec::new(),
        };
        let mut repaired: Vec<Period> = Vec::new();
        for ((period, metric), want) in &expected {
            if only.is_some_and(|p| p != *period) {
                continue;
            }
            let have = stored.get(&(*period, metric.clone())).copied();
            if have == Some(*want) || (have.is_none() && *want == Values::default()) {
                continue;
            }
            report.differences.push(Difference {
                org,
                period: *period,
                subject: metric.clone(),
                stored: have.map(show).unwrap_or_else(|| "no counter".into()),
                expected: show(*want),
            });
            if repair {
                store::rebuild::set_counter(
                    &txn,
                    scope,
                    org,
                    *period,
                    metric,
                    want.used,
                    want.credits,
                )
                .await?;
                if !repaired.contains(period) {
                    repaired.push(*period);
                }
            }
        }

        // The organization's memberships: their counters per cycle against the ledger and holds.
        if only.is_none() {
            super::memberships::recompute_in(&*txn, org, repair, &mut report).await?;
        }

        let rules = plan_rules(&txn, current_org.plan_id).await?;
        if check_flags {
            let counters = store::ledger::counters(&txn, scope, &[org], now).await?;
            let states: Vec<_> = states_from(now, kinds, &rules, &counters)
                .into_iter()
                .map(|m| {
                    let key = (now, m.metric.clone());
                    let mut state = m.state;
                    // Judge the flags against the ledger's counters, not the stored ones.
                    if let Some(v) = expected.get(&key) {
                        state.used = Amount::from_scaled(v.used);
                        state.credits = Amount::from_scaled(v.credits);
                    }
                    (m.metric, state)
                })
                .collect();
            let want = super::usage::evaluation::period_state(
                &states
                    .iter()
                    .map(|(metric, state)| super::usage::MetricUsage {
                        metric: metric.clone(),
                        state: *state,
                    })
                    .collect::<Vec<_>>(),
            );
            let (want_flag, want_details) = (want.exceeded, want.details.clone());
            let stored = store::utilization::stored_period_state(&txn, scope, org, now).await?;
            let (have_flag, have_details) = stored
                .as_ref()
                .map(|s| (s.exceeded, s.details.clone()))
                .unwrap_or((false, serde_json::json!({})));
            // The utilization index: the peak on the period row and a row per limited metric. An
            // organization without a period row is right only when its plan limits nothing.
            let show_index = |s: Option<&store::utilization::PeriodState>| match s {
                None => "no period row".to_owned(),
                Some(s) => format!(
                    "peak {:?} {}",
                    s.peak,
                    s.per_metric
                        .iter()
                        .map(|m| format!(
                            "{}={}{}",
                            m.metric,
                            m.utilization_pct,
                            if m.exceeded { " exceeded" } else { "" }
                        ))
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            };
            let index_right = match &stored {
                Some(s) => s.peak == want.peak && s.per_metric == want.per_metric,
                None => want.per_metric.is_empty(),
            };
            if !index_right {
                report.differences.push(Difference {
                    org,
                    period: now,
                    subject: "utilization index".into(),
                    stored: show_index(stored.as_ref()),
                    expected: show_index(Some(&want)),
                });
                if repair && !repaired.contains(&now) {
                    repaired.push(now);
                }
            }
            if have_flag != want_flag || have_details != want_details {
                report.differences.push(Difference {
                    org,
                    period: now,
                    subject: "flags".into(),
                    stored: format!("has_exceeded_limits={have_flag} {have_details}"),
                    expected: format!("has_exceeded_limits={want_flag} {want_details}"),
                });
                if repair && !repaired.contains(&now) {
                    repaired.push(now);
                }
            }
        }

        if !repair || report.differences.is_empty() {
            txn.rollback().await?;
            return Ok(report);
        }
        let mut alerts = Vec::new();
        for p in &repaired {
            let epoch = epochs.get(p).copied().unwrap_or(0);
            alerts.extend(
                self.reevaluate(&txn, scope, org, *p, epoch, &rules, None)
                    .await?,
            );
        }
        self.commit_and_publish(txn, org, &alerts).await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{NaiveDate, Utc};
    use uuid::Uuid;

    fn event(
        period: (i32, u32),
        metric: &str,
        kind: UsageEventKind,
        q: i64,
    ) -> entity::usage_event::Model {
        entity::usage_event::Model {
            organization_id: Uuid::nil(),
            id: Uuid::now_v7(),
            metric_code: metric.into(),
            kind,
            quantity: q,
            period_start: NaiveDate::from_ymd_opt(period.0, period.1, 1).unwrap(),
            idempotency_key: None,
            reference: None,
            reason: None,
            actor: None,
            reverses_event_id: None,
            membership_id: None,
            cycle: None,
            overage: false,
            charge: 0,
            occurred_at: Utc::now(),
            recorded_at: Utc::now(),
        }
    }

    fn key(y: i32, m: u32, metric: &str) -> Key {
        (
            Period::containing(NaiveDate::from_ymd_opt(y, m, 1).unwrap()),
            metric.into(),
        )
    }

    #[test]
    fn gauges_replay_in_order_and_carry() {
        let events = vec![
            event((2026, 10), "venues", UsageEventKind::Usage, 3),
            event((2026, 10), "venues", UsageEventKind::Usage, 5),
            event((2026, 11), "venues", UsageEventKind::Adjustment, -1),
            event((2026, 11), "venues", UsageEventKind::Credit, 2),
        ];
        let got = expected_counters(vec![], events);
        assert_eq!(
            got[&key(2026, 10, "venues")],
            Values {
                used: 5,
                credits: 0
            }
        );
        assert_eq!(
            got[&key(2026, 11, "venues")],
            Values {
                used: 4,
                credits: 2
            }
        );
    }

    #[test]
    fn a_reset_brings_a_gauge_to_zero() {
        let events = vec![
            event((2026, 11), "staff", UsageEventKind::Usage, 7),
            event((2026, 11), "staff", UsageEventKind::Reset, -7),
        ];
        let got = expected_counters(vec![], events);
        assert_eq!(got[&key(2026, 11, "staff")].used, 0);
    }
}

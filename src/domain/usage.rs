//! The usage engine: recording, enforcement, alerts, credits, corrections, reversals and reads of
//! usage. One change is one transaction; alerts go to the bus only after commit.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use entity::enums::{AlertKind, MetricKind, UsageEventKind};
use entity::{organization, usage_alert, usage_event};
use rust_decimal::Decimal;
use sea_orm::{ActiveEnum, ConnectionTrait, DatabaseConnection, DatabaseTransaction};
use uuid::Uuid;

use super::access::{self, Action};
use super::limits::{LimitRule, MetricState, exceeded_details};
use super::{Amount, MetricCode, OrganizationId, Period, Scope, Viewer};
use crate::alerts::{AlertBus, BusEvent};
use crate::error::{AppError, AppResult};
use crate::store::{self, ledger::CounterChange};

/// What the engine needs besides the caller: the database, the bus and the configured rules.
#[derive(Clone)]
pub struct Engine {
    /// The database behind a scope: the process's base handle, or a request's (`Engine::scoped`).
    pub db: crate::store::db::Db,
    pub bus: AlertBus,
    pub near_limit_pct: Decimal,
    pub lateness: Duration,
    pub clock_skew: Duration,
    pub catalog: Arc<tokio::sync::OnceCell<Arc<MetricCatalog>>>,
    /// Current-period summaries for the hot reads (see `domain::cache`).
    pub cache: Arc<super::cache::StateCache>,
    /// Stripe's API, for the calls the money side makes (Connect).
    pub stripe: crate::stripe_api::StripeApi,
    /// The time memberships' cycles run on (a test moves it).
    pub clock: crate::clock::Clock,
    /// The guest surcharge of booking quotes, in percent.
    pub guest_surcharge_pct: Decimal,
}

/// A metric's state in a period, with its code and kind.
#[derive(Debug, Clone)]
pub struct MetricUsage {
    pub metric: String,
    pub state: MetricState,
}

/// One organization's usage in a period.
#[derive(Debug, Clone)]
pub struct UsageSummary {
    pub org: organization::Model,
    pub period: Period,
    pub metrics: Vec<MetricUsage>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl UsageSummary {
    pub fn has_exceeded(&self) -> bool {
        self.metrics.iter().any(|m| m.state.exceeded())
    }

    pub fn exceeded_details(&self) -> serde_json::Value {
        exceeded_details(self.metrics.iter().map(|m| (m.metric.as_str(), &m.state)))
    }
}

pub struct RecordInput {
    pub organization_id: Option<String>,
    pub metric: String,
    pub quantity: Decimal,
    pub idempotency_key: Option<String>,
    pub reference: Option<String>,
    pub occurred_at: Option<DateTime<Utc>>,
}

/// An amount another change already decided, recorded on a COUNTER (`Engine::record_fact_in`).
pub struct Fact {
    pub org: organization::Model,
    pub metric: &'static str,
    pub quantity: Amount,
    pub key: String,
    pub reference: String,
    pub occurred_at: DateTime<Utc>,
}

/// A grantCredit (kind CREDIT) or adjustUsage (kind ADJUSTMENT).
pub struct Correction<'a> {
    pub org_id: &'a str,
    pub metric: &'a str,
    pub quantity: Decimal,
    pub reason: &'a str,
    pub period: Option<Period>,
    pub kind: UsageEventKind,
}

pub struct RecordOutcome {
    pub accepted: bool,
    pub duplicate: bool,
    pub event: Option<usage_event::Model>,
    pub usage: MetricUsage,
    pub alerts: Vec<usage_alert::Model>,
    pub rejection_reason: Option<String>,
}

impl RecordOutcome {
    /// Whether the recording moved a counter (not a replay, not refused).
    pub fn changed(&self) -> bool {
        self.accepted && !self.duplicate
    }
}

/// A recording checked and parsed, ready to run.
struct ParsedRecord {
    org: organization::Model,
    metric: MetricCode,
    kind: MetricKind,
    quantity: Amount,
    key: Option<String>,
    reference: Option<String>,
    occurred_at: DateTime<Utc>,
}

/// Limit rules of a plan by metric code (empty without a plan: everything unlimited).
pub async fn plan_rules<C: ConnectionTrait>(
    db: &C,
    plan_id: Option<Uuid>,
) -> AppResult<HashMap<String, LimitRule>> {
    let Some(plan_id) = plan_id else {
        return Ok(HashMap::new());
    };
    let limits = store::catalog::limits_for_plans(db, &[plan_id]).await?;
    Ok(limits
        .into_iter()
        .map(|l| {
            (
                l.metric_code,
                LimitRule {
                    included: l.included.map(Amount::from_scaled),
                    enforcement: l.enforcement,
                    overage_unit_price: l.overage_unit_price.map(Amount::from_scaled),
                },
            )
        })
        .collect())
}

/// The metric catalogue, read once per process: metrics change only with migrations, which ship with
/// a new release (and a restart).
#[derive(Debug)]
pub struct MetricCatalog {
    pub metrics: Vec<entity::metric::Model>,
    pub kinds: HashMap<String, MetricKind>,
}

/// Builds the per-metric states of one organization from its counters (all catalogue metrics, zeros
/// where nothing was recorded).
pub fn states_from(
    period: Period,
    kinds: &HashMap<String, MetricKind>,
    rules: &HashMap<String, LimitRule>,
    counters: &[entity::usage_counter::Model],
) -> Vec<MetricUsage> {
    let mut codes: Vec<&String> = kinds.keys().collect();
    codes.sort();
    codes
        .into_iter()
        .map(|code| {
            let row = counters.iter().find(|c| &c.metric_code == code);
            let used = row
                .map(|c| Amount::from_scaled(c.used))
                .unwrap_or(Amount::ZERO);
            let credits = row
                .filter(|c| c.period_start == period.start)
                .map(|c| Amount::from_scaled(c.credits))
                .unwrap_or(Amount::ZERO);
            MetricUsage {
                metric: code.clone(),
                state: MetricState {
                    used,
                    credits,
                    rule: rules.get(code).copied().unwrap_or(LimitRule::UNLIMITED),
                },
            }
        })
        .collect()
}

impl Engine {
    /// An engine over a connected, migrated database, with the rules from settings.
    pub fn new(db: DatabaseConnection, settings: &crate::config::Settings) -> Self {
        Engine {
            db: crate::store::db::Db::new(db, settings.db_statement_timeout),
            bus: AlertBus::new(4096),
            near_limit_pct: settings.near_limit_pct,
            lateness: Duration::days(settings.lateness_days.into()),
            clock_skew: Duration::from_std(settings.clock_skew).unwrap_or(Duration::minutes(2)),
            catalog: Default::default(),
            cache: Arc::new(super::cache::StateCache::new(
                settings.entitlement_cache_ttl,
            )),
            stripe: crate::stripe_api::StripeApi::from_settings(settings),
            clock: crate::clock::Clock::default(),
            guest_surcharge_pct: settings.guest_surcharge_pct,
        }
    }

    /// The same engine for one caller: its reads share one transaction that carries the scope.
    pub fn scoped(&self, scope: Scope) -> Self {
        Engine {
            db: self.db.scoped(scope),
            ..self.clone()
        }
    }

    pub async fn catalog(&self) -> AppResult<Arc<MetricCatalog>> {
        self.catalog
            .get_or_try_init(|| async {
                let metrics = store::catalog::metrics(self.db.pool()).await?;
                let kinds = metrics.iter().map(|m| (m.code.clone(), m.kind)).collect();
                Ok::<_, AppError>(Arc::new(MetricCatalog { metrics, kinds }))
            })
            .await
            .cloned()
    }

    pub(crate) fn validate_time(
        &self,
        occurred_at: Option<DateTime<Utc>>,
    ) -> AppResult<DateTime<Utc>> {
        let now = Utc::now();
        let Some(at) = occurred_at else {
            return Ok(now);
        };
        if at > now + self.clock_skew {
            return Err(AppError::bad_input("occurredAt is in the future"));
        }
        if at < now - self.lateness {
            return Err(AppError::bad_input(format!(
                "occurredAt is older than the lateness window of {} days",
                self.lateness.num_days()
            )));
        }
        Ok(at)
    }

    async fn parse_record(
        &self,
        viewer: &Viewer,
        kinds: &HashMap<String, MetricKind>,
        input: RecordInput,
    ) -> AppResult<ParsedRecord> {
        let org_id = access::target_org(viewer, input.organization_id.as_deref())?;
        let org = access::authorize(&self.db, viewer, org_id, Action::Record).await?;
        let metric = MetricCode::parse(&input.metric)?;
        let kind = *kinds
            .get(metric.as_str())
            .ok_or_else(|| AppError::bad_input(format!("unknown metric {:?}", metric.as_str())))?;
        let quantity = Amount::parse("quantity", input.quantity)?;
        match kind {
            MetricKind::Counter if !quantity.is_positive() => {
                return Err(AppError::bad_input(
                    "quantity of a COUNTER must be greater than 0",
                ));
            }
            MetricKind::Gauge if quantity.is_negative() => {
                return Err(AppError::bad_input("a GAUGE reading must be 0 or more"));
            }
            _ => {}
        }
        let key = super::optional_text("idempotencyKey", input.idempotency_key.as_deref(), 255)?;
        let reference = super::optional_text("reference", input.reference.as_deref(), 255)?;
        let occurred_at = self.validate_time(input.occurred_at)?;
        Ok(ParsedRecord {
            org,
            metric,
            kind,
            quantity,
            key,
            reference,
            occurred_at,
        })
    }

    /// recordUsage: one recording, one transaction.
    pub async fn record(&self, viewer: &Viewer, input: RecordInput) -> AppResult<RecordOutcome> {
        let catalog = self.catalog().await?;
        let kinds = &catalog.kinds;
        let parsed = self.parse_record(viewer, kinds, input).await?;
        let org = OrganizationId(parsed.org.id);
        let txn = self.db.begin_write().await?;
        let outcome = self.record_in(&txn, viewer, &parsed).await?;
        if outcome.changed() {
            self.commit_and_publish(txn, org, &outcome.alerts).await?;
        } else {
            // A replay or a HARD refusal changed nothing: nothing to keep, nobody to tell.
            txn.rollback().await?;
        }
        count_recording(&outcome);
        Ok(outcome)
    }

    /// recordUsageBatch: atomic. Every item is checked first (a malformed or unauthorized item fails
    /// the whole request); then all items are recorded in one transaction, organizations in id
    /// order (so two batches lock periods in the same order and cannot deadlock), each item
    /// answering on its own (a HARD refusal is its payload). An error in any item (an idempotency
    /// key reused for another recording) fails the request and writes nothing.
    pub async fn record_batch(
        &self,
        viewer: &Viewer,
        inputs: Vec<RecordInput>,
    ) -> AppResult<Vec<RecordOutcome>> {
        let catalog = self.catalog().await?;
        let kinds = &catalog.kinds;
        let mut parsed = Vec::with_capacity(inputs.len());
        for input in inputs {
            parsed.push(self.parse_record(viewer, kinds, input).await?);
        }
        let mut order: Vec<OrganizationId> =
            parsed.iter().map(|p| OrganizationId(p.org.id)).collect();
        order.sort();
        order.dedup();
        let mut results: Vec<Option<RecordOutcome>> = parsed.iter().map(|_| None).collect();
        let txn = self.db.begin_write().await?;
        let mut changes: Vec<(OrganizationId, Vec<usage_alert::Model>)> = Vec::new();
        let mut changed = false;
        for org in order {
            let mut alerts = Vec::new();
            for (i, p) in parsed.iter().enumerate().filter(|(_, p)| p.org.id == org.0) {
                // `?` drops the transaction: nothing of the batch is kept.
                let outcome = self.record_in(&txn, viewer, p).await?;
                alerts.extend(outcome.alerts.iter().cloned());
                changed |= outcome.changed();
                results[i] = Some(outcome);
            }
            changes.push((org, alerts));
        }
        if changed {
            let changes: Vec<(OrganizationId, &[usage_alert::Model])> =
                changes.iter().map(|(o, a)| (*o, a.as_slice())).collect();
            self.commit_and_publish_all(txn, &changes, false).await?;
        } else {
            txn.rollback().await?;
        }
        for outcome in results.iter().flatten() {
            count_recording(outcome);
        }
        results
            .into_iter()
            .map(|r| r.ok_or_else(|| AppError::internal(anyhow::anyhow!("batch item lost"))))
            .collect()
    }

    /// Records, inside the caller's transaction, a COUNTER amount that another change already
    /// decided (a payment's revenue), idempotent by `key`: the caller authorized it, and commits and
    /// publishes it. None when the catalogue has no such COUNTER metric.
    pub(crate) async fn record_fact_in(
        &self,
        txn: &DatabaseTransaction,
        viewer: &Viewer,
        fact: Fact,
    ) -> AppResult<Option<RecordOutcome>> {
        let catalog = self.catalog().await?;
        let metric = MetricCode::parse(fact.metric)?;
        if catalog.kinds.get(metric.as_str()) != Some(&MetricKind::Counter) {
            return Ok(None);
        }
        let parsed = ParsedRecord {
            org: fact.org,
            metric,
            kind: MetricKind::Counter,
            quantity: fact.quantity,
            key: Some(fact.key),
            reference: Some(fact.reference),
            occurred_at: fact.occurred_at,
        };
        self.record_in(txn, viewer, &parsed).await.map(Some)
    }

    async fn record_in(
        &self,
        txn: &DatabaseTransaction,
        viewer: &Viewer,
        p: &ParsedRecord,
    ) -> AppResult<RecordOutcome> {
        let scope = viewer.scope();
        let org = OrganizationId(p.org.id);
        let period = Period::of_instant(p.occurred_at);
        let epoch = store::ledger::lock_period(txn, scope, org, period)
            .await?
            .ok_or_else(|| AppError::not_found("organization"))?;
        // The plan is read under the period lock: a concurrent plan change is either before or after.
        let current = store::orgs::find(txn, scope, org)
            .await?
            .ok_or_else(|| AppError::not_found("organization"))?;
        let rules = plan_rules(txn, current.plan_id).await?;
        let rule = rules
            .get(p.metric.as_str())
            .copied()
            .unwrap_or(LimitRule::UNLIMITED);

        if let Some(key) = &p.key
            && let Some(first) = store::ledger::event_by_key(txn, scope, org, key).await?
        {
            // A replay adds nothing; the same key for another recording is the client's mistake,
            // and answering `duplicate` would silently lose that recording.
            if first.metric_code != p.metric.as_str() || first.quantity != p.quantity.scaled() {
                return Err(AppError::conflict(format!(
                    "idempotency key {} was already used for another recording ({} of {})",
                    crate::error::quote(key),
                    Amount::from_scaled(first.quantity).to_decimal().normalize(),
                    first.metric_code
                )));
            }
            return self
                .duplicate(txn, scope, &p.org, period, first, rule)
                .await;
        }

        store::ledger::ensure_counter(txn, scope, org, period, p.metric.as_str(), p.kind).await?;
        let hard_cap = match (rule.enforcement, rule.included) {
            (entity::enums::Enforcement::Hard, Some(included)) => Some(included.scaled()),
            _ => None,
        };
        let change = match p.kind {
            MetricKind::Counter => CounterChange::Add(p.quantity.scaled()),
            MetricKind::Gauge => CounterChange::Set(p.quantity.scaled()),
        };
        let Some((used, credits)) = store::ledger::change_counter(
            txn,
            scope,
            org,
            period,
            p.metric.as_str(),
            change,
            hard_cap,
        )
        .await?
        else {
            // Refused by a HARD limit: nothing of this item is written (a single recording's
            // transaction is rolled back), and its idempotency key stays unused.
            let counters = store::ledger::counters(txn, scope, &[org], period).await?;
            let catalog = self.catalog().await?;
            let kinds = &catalog.kinds;
            let usage = states_from(period, kinds, &rules, &counters)
                .into_iter()
                .find(|m| m.metric == p.metric.as_str())
                .unwrap_or(MetricUsage {
                    metric: p.metric.as_str().to_owned(),
                    state: MetricState {
                        used: Amount::ZERO,
                        credits: Amount::ZERO,
                        rule,
                    },
                });
            let allowance = usage.state.allowance().unwrap_or_default();
            return Ok(RecordOutcome {
                accepted: false,
                duplicate: false,
                event: None,
                rejection_reason: Some(format!(
                    "HARD limit: {} would reach {} of an allowance of {}",
                    p.metric.as_str(),
                    match p.kind {
                        MetricKind::Counter => usage.state.used() + p.quantity.to_decimal(),
                        MetricKind::Gauge => p.quantity.to_decimal(),
                    }
                    .normalize(),
                    allowance.normalize()
                )),
                usage,
                alerts: vec![],
            });
        };

        let event = store::ledger::insert_event(
            txn,
            scope,
            store::ledger::NewEvent {
                org,
                metric_code: p.metric.as_str().to_owned(),
                kind: UsageEventKind::Usage,
                quantity: p.quantity.scaled(),
                period,
                idempotency_key: p.key.clone(),
                reference: p.reference.clone(),
                reason: None,
                actor: Some(viewer.sub.clone()),
                reverses_event_id: None,
                occurred_at: p.occurred_at,
            },
        )
        .await?
        .ok_or_else(|| AppError::conflict("the idempotency key was used concurrently; retry"))?;

        let state = MetricState {
            used: Amount::from_scaled(used),
            credits: Amount::from_scaled(credits),
            rule,
        };
        let alerts = self
            .reevaluate(
                txn,
                scope,
                org,
                period,
                epoch,
                &rules,
                Some(p.metric.as_str()),
            )
            .await?;
        Ok(RecordOutcome {
            accepted: true,
            duplicate: false,
            event: Some(event),
            usage: MetricUsage {
                metric: p.metric.as_str().to_owned(),
                state,
            },
            alerts,
            rejection_reason: None,
        })
    }

    async fn duplicate(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        org: &organization::Model,
        period: Period,
        first: usage_event::Model,
        rule: LimitRule,
    ) -> AppResult<RecordOutcome> {
        let oid = OrganizationId(org.id);
        let first_period = Period::containing(first.period_start);
        let counters = store::ledger::counters(txn, scope, &[oid], first_period).await?;
        let row = counters.iter().find(|c| c.metric_code == first.metric_code);
        let _ = period;
        let state = MetricState {
            used: row
                .map(|c| Amount::from_scaled(c.used))
                .unwrap_or(Amount::ZERO),
            credits: row
                .filter(|c| c.period_start == first_period.start)
                .map(|c| Amount::from_scaled(c.credits))
                .unwrap_or(Amount::ZERO),
            rule,
        };
        Ok(RecordOutcome {
            accepted: true,
            duplicate: true,
            usage: MetricUsage {
                metric: first.metric_code.clone(),
                state,
            },
            event: Some(first),
            alerts: vec![],
            rejection_reason: None,
        })
    }

    /// Re-reads the period's counters, writes the seed's flags, and inserts the alerts whose conditions
    /// now hold (for one metric, or all). Answers the alerts that are new.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn reevaluate(
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

    /// Commits, and delivers the commit's alerts and usage change to live subscribers: on Postgres by
    /// NOTIFY inside the transaction, so every replica's listener receives it exactly when (and only
    /// if) it commits; elsewhere on this process's bus right after the commit.
    pub async fn commit_and_publish(
        &self,
        txn: crate::store::db::WriteTxn,
        org: OrganizationId,
        alerts: &[usage_alert::Model],
    ) -> AppResult<()> {
        self.commit_and_publish_all(txn, &[(org, alerts)], false)
            .await
    }

    /// Commits changes to several organizations (and, with `plans_changed`, to a plan's limits),
    /// then publishes them as `commit_and_publish` does for one.
    pub async fn commit_and_publish_all(
        &self,
        txn: crate::store::db::WriteTxn,
        changes: &[(OrganizationId, &[usage_alert::Model])],
        plans_changed: bool,
    ) -> AppResult<()> {
        for a in changes.iter().flat_map(|(_, alerts)| alerts.iter()) {
            metrics::counter!("tollgate_alerts_total", "kind" => a.kind.to_value()).increment(1);
        }
        let invalidate = || {
            if plans_changed {
                self.cache.clear();
            } else {
                for (org, _) in changes {
                    self.cache.invalidate(*org);
                }
            }
        };
        if self.db.is_postgres() {
            for (org, alerts) in changes {
                for payload in crate::alerts::encode(*org, alerts) {
                    store::notify(&txn, crate::alerts::CHANNEL, &payload).await?;
                }
            }
            if plans_changed {
                let payload = crate::alerts::encode_plans_changed();
                store::notify(&txn, crate::alerts::CHANNEL, &payload).await?;
            }
            txn.commit().await?;
            // Before the answer leaves: this replica's next read sees the write.
            invalidate();
        } else {
            txn.commit().await?;
            invalidate();
            for (org, alerts) in changes {
                self.publish(*org, alerts);
            }
        }
        Ok(())
    }

    /// Publishes committed alerts and a usage change to this process's subscribers.
    fn publish(&self, org: OrganizationId, alerts: &[usage_alert::Model]) {
        for a in alerts {
            self.bus.send(BusEvent::Alert(Arc::new(a.clone())));
        }
        self.bus.send(BusEvent::UsageChanged(org));
    }

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
        for l in limits {
            by_plan.entry(l.plan_id).or_default().insert(
                l.metric_code,
                LimitRule {
                    included: l.included.map(Amount::from_scaled),
                    enforcement: l.enforcement,
                    overage_unit_price: l.overage_unit_price.map(Amount::from_scaled),
                },
            );
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
                let metrics = states_from(period, kinds, rules, &mine);
                let updated_at = rows
                    .iter()
                    .find(|r| r.organization_id == org.id)
                    .map(|r| r.updated_at);
                UsageSummary {
                    org,
                    period,
                    metrics,
                    updated_at,
                }
            })
            .collect())
    }

    /// A platform correction of one metric's counter or credits (grantCredit, adjustUsage).
    pub async fn correct(&self, viewer: &Viewer, c: Correction<'_>) -> AppResult<MetricUsage> {
        let Correction {
            org_id,
            metric,
            quantity,
            reason,
            period,
            kind,
        } = c;
        access::require_platform(viewer)?;
        let org = access::authorize(
            &self.db,
            viewer,
            OrganizationId::parse(org_id)?,
            Action::Platform,
        )
        .await?;
        let oid = OrganizationId(org.id);
        let reason = super::required_text("reason", reason, 1000)?;
        let catalog = self.catalog().await?;
        let kinds = &catalog.kinds;
        let code = MetricCode::parse(metric)?;
        let mkind = *kinds
            .get(code.as_str())
            .ok_or_else(|| AppError::bad_input(format!("unknown metric {metric:?}")))?;
        let qty = Amount::parse("quantity", quantity)?;
        if kind == UsageEventKind::Credit && !qty.is_positive() {
            return Err(AppError::bad_input("a credit must be greater than 0"));
        }
        if kind == UsageEventKind::Adjustment && qty.scaled() == 0 {
            return Err(AppError::bad_input("an adjustment must not be 0"));
        }
        let period = period.unwrap_or_else(Period::current);
        let scope = viewer.scope();
        let txn = self.db.begin_write().await?;
        let epoch = store::ledger::lock_period(&txn, scope, oid, period)
            .await?
            .ok_or_else(|| AppError::not_found("organization"))?;
        let rules = plan_rules(&txn, org.plan_id).await?;
        store::ledger::ensure_counter(&txn, scope, oid, period, code.as_str(), mkind).await?;
        let change = if kind == UsageEventKind::Credit {
            CounterChange::Credit(qty.scaled())
        } else {
            CounterChange::Add(qty.scaled())
        };
        let moved =
            store::ledger::change_counter(&txn, scope, oid, period, code.as_str(), change, None)
                .await?;
        if kind == UsageEventKind::Adjustment && moved.is_some_and(|(used, _)| used < 0) {
            // Dropping the transaction rolls the change back.
            return Err(AppError::bad_input(
                "the adjustment would take usage below zero",
            ));
        }
        self.append(
            &txn,
            scope,
            viewer,
            oid,
            code.as_str(),
            kind,
            qty.scaled(),
            period,
            Some(reason),
            None,
            None,
        )
        .await?;
        let alerts = self
            .reevaluate(&txn, scope, oid, period, epoch, &rules, None)
            .await?;
        let counters = store::ledger::counters(&txn, scope, &[oid], period).await?;
        self.commit_and_publish(txn, oid, &alerts).await?;
        states_from(period, kinds, &rules, &counters)
            .into_iter()
            .find(|m| m.metric == code.as_str())
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("metric vanished")))
    }

    /// resetUsage: zero this period's counters (all metrics or one), audited as RESET events.
    pub async fn reset(
        &self,
        viewer: &Viewer,
        org_id: &str,
        metric: Option<&str>,
        reason: &str,
        period: Option<Period>,
    ) -> AppResult<UsageSummary> {
        access::require_platform(viewer)?;
        let org = access::authorize(
            &self.db,
            viewer,
            OrganizationId::parse(org_id)?,
            Action::Platform,
        )
        .await?;
        let oid = OrganizationId(org.id);
        let reason = super::required_text("reason", reason, 1000)?;
        let catalog = self.catalog().await?;
        let kinds = &catalog.kinds;
        let targets: Vec<String> = match metric {
            Some(m) => {
                let code = MetricCode::parse(m)?;
                if !kinds.contains_key(code.as_str()) {
                    return Err(AppError::bad_input(format!("unknown metric {m:?}")));
                }
                vec![code.as_str().to_owned()]
            }
            None => {
                let mut all: Vec<String> = kinds.keys().cloned().collect();
                all.sort();
                all
            }
        };
        let period = period.unwrap_or_else(Period::current);
        let scope = viewer.scope();
        let txn = self.db.begin_write().await?;
        let epoch = store::ledger::lock_period(&txn, scope, oid, period)
            .await?
            .ok_or_else(|| AppError::not_found("organization"))?;
        let rules = plan_rules(&txn, org.plan_id).await?;
        for code in &targets {
            let kind = kinds.get(code).copied().unwrap_or(MetricKind::Counter);
            store::ledger::ensure_counter(&txn, scope, oid, period, code, kind).await?;
            let Some((before, _)) = store::ledger::change_counter(
                &txn,
                scope,
                oid,
                period,
                code,
                CounterChange::Add(0),
                None,
            )
            .await?
            else {
                continue;
            };
            store::ledger::change_counter(
                &txn,
                scope,
                oid,
                period,
                code,
                CounterChange::Set(0),
                None,
            )
            .await?;
            // The RESET event carries the signed change, so the ledger still sums to the counter.
            self.append(
                &txn,
                scope,
                viewer,
                oid,
                code,
                UsageEventKind::Reset,
                -before,
                period,
                Some(reason.clone()),
                None,
                None,
            )
            .await?;
        }
        let alerts = self
            .reevaluate(&txn, scope, oid, period, epoch, &rules, None)
            .await?;
        let summary = self.summaries(&txn, scope, vec![org], period).await?;
        self.commit_and_publish(txn, oid, &alerts).await?;
        summary
            .into_iter()
            .next()
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("summary vanished")))
    }

    /// reverseUsage: a REVERSAL for every not-yet-reversed USAGE event with the reference.
    pub async fn reverse(
        &self,
        viewer: &Viewer,
        org_id: Option<&str>,
        reference: &str,
        reason: Option<&str>,
    ) -> AppResult<(Vec<usage_event::Model>, Vec<MetricUsage>)> {
        let oid = access::target_org(viewer, org_id)?;
        let org = access::authorize(&self.db, viewer, oid, Action::Record).await?;
        let reference = super::required_text("reference", reference, 255)?;
        let reason = super::optional_text("reason", reason, 1000)?;
        let scope = viewer.scope();
        let catalog = self.catalog().await?;
        let kinds = &catalog.kinds;
        let txn = self.db.begin_write().await?;
        // Lock the current period first so concurrent reversals of one reference serialize.
        store::ledger::lock_period(&txn, scope, oid, Period::current()).await?;
        let events = store::ledger::unreversed_by_reference(&txn, scope, oid, &reference).await?;
        let rules = plan_rules(&txn, org.plan_id).await?;
        let mut written = Vec::new();
        let mut touched: Vec<(Period, String)> = Vec::new();
        let mut alerts = Vec::new();
        for e in events {
            if kinds.get(&e.metric_code) == Some(&MetricKind::Gauge) {
                // A GAUGE reading is an absolute value; undoing it is a new reading, not a reversal.
                continue;
            }
            let period = Period::containing(e.period_start);
            let epoch = store::ledger::lock_period(&txn, scope, oid, period)
                .await?
                .unwrap_or(0);
            // A reversal never takes a counter below zero: after a resetUsage (or a correction)
            // already removed the usage it undoes, it removes only what is left. The period is
            // locked, so the value read here is the one the update changes.
            let used = store::ledger::counter_used(&txn, scope, oid, period, &e.metric_code)
                .await?
                .unwrap_or(0);
            let undo = e.quantity.min(used.max(0));
            store::ledger::change_counter(
                &txn,
                scope,
                oid,
                period,
                &e.metric_code,
                CounterChange::Add(-undo),
                None,
            )
            .await?;
            let rev = self
                .append(
                    &txn,
                    scope,
                    viewer,
                    oid,
                    &e.metric_code,
                    UsageEventKind::Reversal,
                    -undo,
                    period,
                    reason.clone(),
                    Some(e.id),
                    e.reference.clone(),
                )
                .await?;
            written.push(rev);
            alerts.extend(
                self.reevaluate(
                    &txn,
                    scope,
                    oid,
                    period,
                    epoch,
                    &rules,
                    Some(&e.metric_code),
                )
                .await?,
            );
            if !touched.contains(&(period, e.metric_code.clone())) {
                touched.push((period, e.metric_code.clone()));
            }
        }
        let mut usage = Vec::new();
        for (period, code) in &touched {
            let counters = store::ledger::counters(&txn, scope, &[oid], *period).await?;
            usage.extend(
                states_from(*period, kinds, &rules, &counters)
                    .into_iter()
                    .filter(|m| &m.metric == code),
            );
        }
        if written.is_empty() {
            txn.commit().await?;
        } else {
            self.commit_and_publish(txn, oid, &alerts).await?;
        }
        Ok((written, usage))
    }

    #[allow(clippy::too_many_arguments)]
    async fn append(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        viewer: &Viewer,
        org: OrganizationId,
        metric: &str,
        kind: UsageEventKind,
        quantity: i64,
        period: Period,
        reason: Option<String>,
        reverses: Option<Uuid>,
        reference: Option<String>,
    ) -> AppResult<usage_event::Model> {
        store::ledger::insert_event(
            txn,
            scope,
            store::ledger::NewEvent {
                org,
                metric_code: metric.to_owned(),
                kind,
                quantity,
                period,
                idempotency_key: None,
                reference,
                reason,
                actor: Some(viewer.sub.clone()),
                reverses_event_id: reverses,
                occurred_at: Utc::now(),
            },
        )
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("ledger insert refused")))
    }

    /// After a plan's limits change: re-evaluates the current period of every organization on the
    /// plan that has one (the stored flags follow the new limits, and alerts whose conditions now
    /// hold are raised; not re-armed, as the organizations keep their plan). Organizations are taken
    /// in id order, so two such transactions cannot lock them in opposite orders.
    pub(super) async fn reevaluate_plan(
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

/// Counts a recording by outcome, for /metrics.
fn count_recording(outcome: &RecordOutcome) {
    let label = match (outcome.accepted, outcome.duplicate) {
        (false, _) => "refused",
        (true, true) => "duplicate",
        (true, false) => "accepted",
    };
    metrics::counter!("tollgate_recordings_total", "outcome" => label).increment(1);
}

fn threshold_for(kind: AlertKind, near: Decimal) -> Decimal {
    match kind {
        AlertKind::NearLimit => near,
        AlertKind::LimitExceeded | AlertKind::OverageStarted => Decimal::ONE_HUNDRED,
    }
}

//! The usage engine: recording, enforcement, alerts, credits, corrections, reversals and reads of
//! usage. One change is one transaction; alerts go to the bus only after commit. This file holds
//! the engine and its value types; `recording` (recordUsage, batches, facts of the money side),
//! `corrections` (credits, adjustments, resets, reversals), `evaluation` (limits' flags and alerts),
//! `publish` (commit, then the bus) and `reads` (entitlement checks, summaries) its operations.

mod batch;
mod corrections;
pub mod evaluation;
mod group;
pub mod index;
mod publish;
mod reads;
mod recording;
mod rounds;
mod wave;

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Datelike, Duration, Utc};
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
    /// The group-commit writers' queue, started on the first recording (`group`).
    writers: Arc<tokio::sync::OnceCell<group::Queue>>,
    /// The subscriptions' rounds' reader, started on the first round (`rounds`).
    rounds: Arc<tokio::sync::OnceCell<rounds::Queue>>,
    /// How many group-commit writers run on Postgres: one for each CPU, at most one for every two
    /// connections of the pool.
    writers_on_postgres: usize,
    /// The latest period whose utilization index is known complete, as days from the common era
    /// (0: none yet); see `index::index_complete`.
    pub indexed_period: Arc<std::sync::atomic::AtomicI32>,
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
    org: OrganizationId,
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
    Ok(rules_by_metric(&limits))
}

/// A plan's stored limit (scaled amounts) as the rule a recording and a summary apply.
pub(crate) fn stored_rule(
    included: Option<i64>,
    enforcement: entity::enums::Enforcement,
    overage_unit_price: Option<i64>,
) -> LimitRule {
    LimitRule {
        included: included.map(Amount::from_scaled),
        enforcement,
        overage_unit_price: overage_unit_price.map(Amount::from_scaled),
    }
}

/// A plan's limit row as its rule (`stored_rule`).
pub(crate) fn limit_rule(l: &entity::plan_limit::Model) -> LimitRule {
    stored_rule(l.included, l.enforcement, l.overage_unit_price)
}

/// A plan's limits as rules, by metric code.
pub(crate) fn rules_by_metric(limits: &[entity::plan_limit::Model]) -> HashMap<String, LimitRule> {
    limits
        .iter()
        .map(|l| (l.metric_code.clone(), limit_rule(l)))
        .collect()
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
            writers: Default::default(),
            rounds: Default::default(),
            writers_on_postgres: std::thread::available_parallelism()
                .map_or(1, usize::from)
                .clamp(1, (settings.db_max_connections as usize / 2).max(1)),
            indexed_period: Default::default(),
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
}

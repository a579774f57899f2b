//! Recording usage: one recording, a batch (one transaction), and facts the money side records.

use super::*;

impl Engine {
    /// Checks a recording without the database: the caller's scope and role (a foreign organization
    /// answers NOT_FOUND, as a missing one does, before any role check), the metric, the amount, the
    /// key and the time. The organization's existence is checked by the writer, under its lock.
    fn parse_record(
        &self,
        viewer: &Viewer,
        kinds: &HashMap<String, MetricKind>,
        input: RecordInput,
    ) -> AppResult<ParsedRecord> {
        let org = access::target_org(viewer, input.organization_id.as_deref())?;
        if !viewer.scope().allows(org) {
            return Err(AppError::not_found("organization"));
        }
        access::require(viewer, Action::Record)?;
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
        let key =
            crate::domain::optional_text("idempotencyKey", input.idempotency_key.as_deref(), 255)?;
        let reference = crate::domain::optional_text("reference", input.reference.as_deref(), 255)?;
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

    /// recordUsage: one recording, committed by the group writer with whatever else is queued.
    pub async fn record(&self, viewer: &Viewer, input: RecordInput) -> AppResult<RecordOutcome> {
        let catalog = self.catalog().await?;
        let parsed = self.parse_record(viewer, &catalog.kinds, input)?;
        let mut outcomes = self.submit(viewer, vec![parsed]).await?;
        outcomes
            .pop()
            .ok_or_else(|| AppError::internal(anyhow::anyhow!("recording lost")))
    }

    /// recordUsageBatch: atomic. Every item is checked first (a malformed or unauthorized item fails
    /// the whole request); then all items are recorded in one transaction, each answering on its own
    /// (a HARD refusal is its payload). An error in any item (an unknown organization, an
    /// idempotency key reused for another recording) fails the request and writes nothing.
    pub async fn record_batch(
        &self,
        viewer: &Viewer,
        inputs: Vec<RecordInput>,
    ) -> AppResult<Vec<RecordOutcome>> {
        let catalog = self.catalog().await?;
        let parsed = inputs
            .into_iter()
            .map(|input| self.parse_record(viewer, &catalog.kinds, input))
            .collect::<AppResult<Vec<_>>>()?;
        self.submit(viewer, parsed).await
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
            org: OrganizationId(fact.org.id),
            metric,
            kind: MetricKind::Counter,
            quantity: fact.quantity,
            key: Some(fact.key),
            reference: Some(fact.reference),
            occurred_at: fact.occurred_at,
        };
        self.record_in(txn, viewer, &parsed, false, None)
            .await
            .map(Some)
    }

    /// One recording inside a transaction: the organization's lock, one read of everything the rules
    /// need, the counter and the ledger (refused by a HARD cap without writing anything), then the
    /// flags when they change and the alerts that are new. `in_group`: the transaction is a group
    /// commit's, which carries many callers: the lock's statement also sets this caller's scope
    /// (Postgres), and the statements NOTIFY the change and the alerts, delivered on commit.
    /// Otherwise the caller's own transaction already carries its scope, and it publishes. `ahead`:
    /// the view, already read (`record_run`).
    pub(super) async fn record_in(
        &self,
        txn: &DatabaseTransaction,
        viewer: &Viewer,
        p: &ParsedRecord,
        in_group: bool,
        ahead: Option<store::recording::RecordingView>,
    ) -> AppResult<RecordOutcome> {
        let scope = viewer.scope();
        let org = p.org;
        let period = Period::of_instant(p.occurred_at);
        let metric = p.metric.as_str();
        let keys: Vec<&str> = p.key.as_deref().into_iter().collect();
        let (view, rules) = self
            .locked_view(txn, scope, org, period, metric, &keys, in_group, ahead)
            .await?;
        let rule = rules.get(metric).copied().unwrap_or(LimitRule::UNLIMITED);
        let (usage, change) = match decide(p, &view, rule)? {
            Step::Taken(key) => {
                let first = store::ledger::event_by_key(txn, scope, org, key)
                    .await?
                    .ok_or_else(|| {
                        AppError::internal(anyhow::anyhow!("a taken key has no event"))
                    })?;
                // A replay adds nothing; the same key for another recording is the client's
                // mistake, and answering `duplicate` would silently lose that recording.
                if first.metric_code != metric || first.quantity != p.quantity.scaled() {
                    return Err(reused_key(key, &first));
                }
                return self.duplicate(txn, scope, org, first, rule).await;
            }
            Step::Refused => {
                // Refused by a HARD limit: nothing of this item is written, and its key stays
                // unused.
                return self
                    .refused(txn, scope, period, p, &rules, rule, view.counter)
                    .await;
            }
            Step::Accepted { usage, change } => (usage, change),
        };
        let (next, credits) = (usage.state.used.scaled(), usage.state.credits.scaled());
        let hard_cap = hard_cap(&rule);
        let amount = p.quantity.scaled();
        let movement = match p.kind {
            MetricKind::Counter => store::recording::Move::Add(amount),
            MetricKind::Gauge => store::recording::Move::Set(amount),
        };
        let postgres = self.db.is_postgres();
        let now = Utc::now();
        let event = usage_event(viewer, p, period, now);
        let announce = in_group && postgres;
        let applied = store::recording::apply(
            txn,
            scope,
            &store::recording::Apply {
                org,
                period,
                metric,
                movement,
                hard_cap,
                event_id: event.id,
                quantity: amount,
                key: p.key.as_deref(),
                reference: p.reference.as_deref(),
                actor: &viewer.sub,
                occurred_at: p.occurred_at,
                recorded_at: now,
                notify: announce
                    .then(|| (crate::alerts::CHANNEL, crate::alerts::encode_usage(org))),
                // The index and the period row go with the counter and the ledger (one statement
                // on Postgres, one script on SQLite).
                index: change.as_ref(),
            },
        )
        .await?
        .filter(|a| (a.used, a.credits) == (next, credits))
        .ok_or_else(|| {
            AppError::internal(anyhow::anyhow!(
                "the counter did not move as its lock's read said"
            ))
        })?;
        if !applied.inserted {
            // Taken between the read and the insert by a writer outside the lock: the caller undoes
            // the transaction, and a retry answers as a replay.
            return Err(AppError::conflict(
                "the idempotency key was used concurrently; retry",
            ));
        }
        let alerts = self
            .evaluate_recorded(
                txn,
                scope,
                org,
                period,
                &view,
                &rules,
                &usage,
                change.as_ref(),
                announce,
            )
            .await?;
        Ok(RecordOutcome {
            accepted: true,
            duplicate: false,
            event: Some(event),
            usage,
            alerts,
            rejection_reason: None,
        })
    }

    /// Takes the organization's lock (in a group's transaction, with the caller's scope), then reads
    /// what the rules need: the view, and the plan's limits as rules. Read under the lock, so a
    /// concurrent plan change or recording is wholly before or after. `ahead`: the view, already read
    /// under the lock the transaction holds (`record_run`), and checked against the caller's scope
    /// here as a read would be.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn locked_view(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        org: OrganizationId,
        period: Period,
        metric: &str,
        keys: &[&str],
        in_group: bool,
        ahead: Option<store::recording::RecordingView>,
    ) -> AppResult<(store::recording::RecordingView, HashMap<String, LimitRule>)> {
        let view = match ahead {
            Some(view) if view.org.id == org.0 && scope.allows(org) => Some(view),
            _ => {
                if in_group {
                    store::recording::enter(txn, scope, org).await?;
                } else {
                    store::recording::lock_org(txn, org).await?;
                }
                store::recording::view(txn, scope, org, period, metric, keys).await?
            }
        };
        let view = view.ok_or_else(|| AppError::not_found("organization"))?;
        let rules = rules_of(&view);
        Ok((view, rules))
    }

    /// The answer to a recording a HARD limit refused: the metric's state as it stands.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn refused(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        period: Period,
        p: &ParsedRecord,
        rules: &HashMap<String, LimitRule>,
        rule: LimitRule,
        counter: Option<(i64, i64)>,
    ) -> AppResult<RecordOutcome> {
        let usage = match refused_usage(p, rule, counter) {
            Some(usage) => usage,
            // A GAUGE without a row in the period shows its latest earlier reading.
            None => {
                let metric = p.metric.as_str();
                let counters = store::ledger::counters(txn, scope, &[p.org], period).await?;
                let catalog = self.catalog().await?;
                states_from(period, &catalog.kinds, rules, &counters)
                    .into_iter()
                    .find(|m| m.metric == metric)
                    .unwrap_or(MetricUsage {
                        metric: metric.to_owned(),
                        state: MetricState {
                            used: Amount::ZERO,
                            credits: Amount::ZERO,
                            rule,
                        },
                    })
            }
        };
        Ok(refusal(p, usage))
    }

    pub(super) async fn duplicate(
        &self,
        txn: &DatabaseTransaction,
        scope: Scope,
        oid: OrganizationId,
        first: usage_event::Model,
        rule: LimitRule,
    ) -> AppResult<RecordOutcome> {
        let first_period = Period::containing(first.period_start);
        let counters = store::ledger::counters(txn, scope, &[oid], first_period).await?;
        let row = counters.iter().find(|c| c.metric_code == first.metric_code);
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
}

/// The ledger event of an accepted recording.
pub(super) fn usage_event(
    viewer: &Viewer,
    p: &ParsedRecord,
    period: Period,
    now: DateTime<Utc>,
) -> usage_event::Model {
    usage_event::Model {
        organization_id: p.org.0,
        id: Uuid::now_v7(),
        metric_code: p.metric.as_str().to_owned(),
        kind: UsageEventKind::Usage,
        quantity: p.quantity.scaled(),
        period_start: period.start,
        idempotency_key: p.key.clone(),
        reference: p.reference.clone(),
        reason: None,
        actor: Some(viewer.sub.clone()),
        reverses_event_id: None,
        membership_id: None,
        cycle: None,
        overage: false,
        charge: 0,
        occurred_at: p.occurred_at,
        recorded_at: now,
    }
}

/// The plan's included amount when the limit is HARD (what a recording may not pass).
pub(super) fn hard_cap(rule: &LimitRule) -> Option<i64> {
    match (rule.enforcement, rule.included) {
        (entity::enums::Enforcement::Hard, Some(included)) => Some(included.scaled()),
        _ => None,
    }
}

/// Whether moving the metric to `next` (with `credits` on top of the allowance) would pass a HARD
/// cap. Computed wide: no `used`, `credits` or cap can overflow it.
pub(super) fn passes_cap(cap: Option<i64>, next: i64, credits: i64) -> bool {
    cap.is_some_and(|cap| i128::from(next) - i128::from(credits) > i128::from(cap))
}

/// The error of a counter that would pass BIGINT (BAD_USER_INPUT).
pub(super) fn counter_overflow() -> AppError {
    AppError::from(sea_orm::DbErr::Custom(
        store::ledger::COUNTER_OVERFLOW.to_owned(),
    ))
}

/// Counts a recording by outcome, for /metrics.
pub(super) fn count_recording(outcome: &RecordOutcome) {
    let label = match (outcome.accepted, outcome.duplicate) {
        (false, _) => "refused",
        (true, true) => "duplicate",
        (true, false) => "accepted",
    };
    metrics::counter!("tollgate_recordings_total", "outcome" => label).increment(1);
}

/// What a recording does, decided from its view under the organization's lock.
pub(super) enum Step<'a> {
    /// Its key is taken: a replay, or the key reused for another recording (the first event
    /// tells).
    Taken(&'a str),
    /// A HARD limit refuses it: nothing is written, and its key stays unused.
    Refused,
    /// Accepted: the metric's state once applied, and what that changes in the index and on the
    /// period row (None: the period row's state is written whole, `write_flags_after`).
    Accepted {
        usage: MetricUsage,
        change: Option<store::recording::IndexChange>,
    },
}

/// Decides a recording from its view (the organization's lock held since the view was read).
pub(super) fn decide<'a>(
    p: &'a ParsedRecord,
    view: &store::recording::RecordingView,
    rule: LimitRule,
) -> AppResult<Step<'a>> {
    if let Some(key) = p
        .key
        .as_deref()
        .filter(|k| view.taken.iter().any(|t| t == k))
    {
        return Ok(Step::Taken(key));
    }
    let (used, credits) = view.counter.unwrap_or((0, 0));
    let next = next_used(p, used)?;
    if passes_cap(hard_cap(&rule), next, credits) {
        return Ok(Step::Refused);
    }
    let usage = MetricUsage {
        metric: p.metric.as_str().to_owned(),
        state: MetricState {
            used: Amount::from_scaled(next),
            credits: Amount::from_scaled(credits),
            rule,
        },
    };
    let change = Engine::index_change(view, &usage);
    Ok(Step::Accepted { usage, change })
}

/// A metric's `used` once a recording applies: a COUNTER adds (BAD_USER_INPUT past BIGINT), a GAUGE
/// reading replaces.
pub(super) fn next_used(p: &ParsedRecord, used: i64) -> AppResult<i64> {
    let amount = p.quantity.scaled();
    match p.kind {
        MetricKind::Counter => used.checked_add(amount).ok_or_else(counter_overflow),
        MetricKind::Gauge => Ok(amount),
    }
}

/// The error of an idempotency key already used for another recording.
pub(super) fn reused_key(key: &str, first: &usage_event::Model) -> AppError {
    AppError::conflict(format!(
        "idempotency key {} was already used for another recording ({} of {})",
        crate::error::quote(key),
        Amount::from_scaled(first.quantity).to_decimal().normalize(),
        first.metric_code
    ))
}

/// The metric's state a HARD refusal answers, when the view tells it (None: a GAUGE without a row
/// in the period, which shows its latest earlier reading).
pub(super) fn refused_usage(
    p: &ParsedRecord,
    rule: LimitRule,
    counter: Option<(i64, i64)>,
) -> Option<MetricUsage> {
    let (used, credits) = match (counter, p.kind) {
        (Some(c), _) => c,
        (None, MetricKind::Counter) => (0, 0),
        (None, MetricKind::Gauge) => return None,
    };
    Some(MetricUsage {
        metric: p.metric.as_str().to_owned(),
        state: MetricState {
            used: Amount::from_scaled(used),
            credits: Amount::from_scaled(credits),
            rule,
        },
    })
}

/// The answer to a recording a HARD limit refused, with the metric's state as it stands.
pub(super) fn refusal(p: &ParsedRecord, usage: MetricUsage) -> RecordOutcome {
    let allowance = usage.state.allowance().unwrap_or_default();
    RecordOutcome {
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
    }
}

/// The plan's limits of a view, as rules.
pub(super) fn rules_of(view: &store::recording::RecordingView) -> HashMap<String, LimitRule> {
    view.limits
        .iter()
        .map(|(code, l)| {
            let rule = stored_rule(l.included, l.enforcement, l.overage_unit_price);
            (code.clone(), rule)
        })
        .collect()
}

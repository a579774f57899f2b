//! Recording usage: one recording, a batch (one transaction), and facts the money side records.

use super::*;

impl Engine {
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

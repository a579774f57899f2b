//! Corrections: credits, adjustments, resets and reversals, each a ledger event with its actor and reason.

use super::*;

impl Engine {
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
        let reason = crate::domain::required_text("reason", reason, 1000)?;
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
        let reason = crate::domain::required_text("reason", reason, 1000)?;
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
        let reference = crate::domain::required_text("reference", reference, 255)?;
        let reason = crate::domain::optional_text("reason", reason, 1000)?;
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
}

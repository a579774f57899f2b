//! The group writer's statements over several organizations at once (`domain::usage::group`): the
//! group's scope and writer locks in one statement, and a wave's writes in multi-row statements (the
//! counters, the utilization index, the period rows' peaks). The wave's reads are
//! `recording::views`; its ledger and alert inserts are `recording::insert_events` and
//! `recording::insert_alerts`, which already take many rows.
//!
//! Each statement here touches organizations whose recordings were checked against their callers'
//! scopes before they were queued; on Postgres, row-level security also holds each statement to the
//! group's organizations (`enter`, m20261130_000014).

use chrono::Utc;
use entity::usage_event;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Value};
use uuid::Uuid;

use super::{execute, placeholders, push_row, query_all, query_one};
use crate::domain::{OrganizationId, Period};

/// Sets the transaction's scope to the group's organizations (Postgres; SQLite has no row-level
/// security) and, with `lock`, takes their writer locks (`recording::lock_key`) in ascending key
/// order, in one statement.
pub async fn enter<C: ConnectionTrait>(
    db: &C,
    orgs: &[OrganizationId],
    lock: bool,
) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let ids: Vec<String> = orgs.iter().map(|o| o.0.to_string()).collect();
    let mut values: Vec<Value> = vec![ids.join(",").into()];
    // The group's statements take as many shapes as a wave has sizes: a generic plan, made once
    // for each cached statement, spares planning them again at each execution (and a custom plan
    // that flips with the values).
    let mut sql = "SELECT set_config('tollgate.org_ids', $1, true), set_config('tollgate.org_id', '', true), \
                   set_config('tollgate.platform', 'off', true), \
                   set_config('plan_cache_mode', 'force_generic_plan', true)"
        .to_owned();
    if lock {
        let mut keys: Vec<i64> = orgs
            .iter()
            .map(|o| super::recording::lock_key(*o))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let keys: Vec<String> = keys.iter().map(i64::to_string).collect();
        values.push(keys.join(",").into());
        // unnest yields the keys in the array's order, and the aggregate takes each lock as it
        // reads it: ascending, as every writer that locks several organizations does.
        sql.push_str(
            ", (SELECT COUNT(pg_advisory_xact_lock(k)) FROM unnest(string_to_array($2, ',')::bigint[]) AS k)",
        );
    }
    query_one(db, &sql, values).await.map(|_| ())
}

/// A counter a wave moves, decided under the organization's lock.
pub struct CounterWrite<'a> {
    pub org: OrganizationId,
    pub period: Period,
    pub metric: &'a str,
    /// The (used, credits) the lock's read found; None: the period has no row for the metric yet.
    pub before: Option<(i64, i64)>,
    pub used: i64,
}

/// Writes a wave's counters: one multi-row update of the rows that exist, each only if it still holds
/// what the lock's read found, and one multi-row insert of the new ones. False when a row was not as
/// read (a writer outside the lock): the caller undoes the transaction.
pub async fn write_counters<C: ConnectionTrait>(
    db: &C,
    writes: &[CounterWrite<'_>],
) -> Result<bool, DbErr> {
    let now = Utc::now();
    let (moved, new): (Vec<&CounterWrite>, Vec<&CounterWrite>) =
        writes.iter().partition(|w| w.before.is_some());
    for chunk in moved.chunks(1000) {
        let mut values: Vec<Value> = vec![now.into()];
        let mut rows = Vec::with_capacity(chunk.len());
        for w in chunk {
            let (used, credits) = w.before.unwrap_or_default();
            push_row(
                &mut rows,
                &mut values,
                [
                    w.org.0.into(),
                    w.period.start.into(),
                    w.metric.into(),
                    used.into(),
                    credits.into(),
                    w.used.into(),
                ],
            );
        }
        super::pad_rows(db.get_database_backend(), &mut rows, &mut values, 6, 0);
        let changed = execute(
            db,
            &format!(
                "UPDATE usage_counters SET used = v.column6, updated_at = $1 FROM (VALUES {}) AS v \
                 WHERE usage_counters.organization_id = v.column1 AND usage_counters.period_start = v.column2 \
                   AND usage_counters.metric_code = v.column3 AND usage_counters.used = v.column4 \
                   AND usage_counters.credits = v.column5",
                rows.join(", ")
            ),
            values,
        )
        .await?;
        if changed != chunk.len() as u64 {
            return Ok(false);
        }
    }
    for chunk in new.chunks(1000) {
        let mut values: Vec<Value> = vec![now.into()];
        let mut rows = Vec::with_capacity(chunk.len());
        for w in chunk {
            rows.push(format!("({}, 0, $1)", placeholders(values.len() + 1, 4)));
            values.extend([
                w.org.0.into(),
                w.period.start.into(),
                w.metric.into(),
                w.used.into(),
            ]);
        }
        let inserted = execute(
            db,
            &format!(
                "INSERT INTO usage_counters (organization_id, period_start, metric_code, used, credits, updated_at) \
                 VALUES {} ON CONFLICT (organization_id, period_start, metric_code) DO NOTHING",
                rows.join(", ")
            ),
            values,
        )
        .await?;
        if inserted != chunk.len() as u64 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes rows of the utilization index: (organization, period, metric, utilization, exceeded), in
/// multi-row upserts.
pub async fn write_index<C: ConnectionTrait>(
    db: &C,
    rows: &[(OrganizationId, Period, &str, f64, bool)],
) -> Result<(), DbErr> {
    for chunk in rows.chunks(1000) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 5);
        let mut tuples = Vec::with_capacity(chunk.len());
        for (org, period, metric, utilization, exceeded) in chunk {
            push_row(
                &mut tuples,
                &mut values,
                [
                    org.0.into(),
                    period.start.into(),
                    (*metric).into(),
                    (*utilization).into(),
                    (*exceeded).into(),
                ],
            );
        }
        let padded = super::pad_rows(db.get_database_backend(), &mut tuples, &mut values, 5, 0);
        execute(
            db,
            &super::utilization::upsert_index(padded, &tuples),
            values,
        )
        .await?;
    }
    Ok(())
}

/// Sets period rows' peak utilization: (organization, period, peak), in multi-row updates; at most
/// one row for each organization and period.
pub async fn write_peaks<C: ConnectionTrait>(
    db: &C,
    rows: &[(OrganizationId, Period, f64)],
) -> Result<(), DbErr> {
    let now = Utc::now();
    for chunk in rows.chunks(1000) {
        let mut values: Vec<Value> = vec![now.into()];
        let mut tuples = Vec::with_capacity(chunk.len());
        for (org, period, peak) in chunk {
            push_row(
                &mut tuples,
                &mut values,
                [org.0.into(), period.start.into(), (*peak).into()],
            );
        }
        super::pad_rows(db.get_database_backend(), &mut tuples, &mut values, 3, 0);
        execute(
            db,
            &format!(
                "UPDATE organization_usage SET peak_utilization_pct = v.column3, updated_at = $1 \
                 FROM (VALUES {}) AS v \
                 WHERE organization_usage.organization_id = v.column1 AND organization_usage.period_start = v.column2",
                tuples.join(", ")
            ),
            values,
        )
        .await?;
    }
    Ok(())
}

/// Which of `events` the ledger holds (after an insert that skipped some): their ids.
pub async fn events_present<C: ConnectionTrait>(
    db: &C,
    events: &[usage_event::Model],
) -> Result<Vec<Uuid>, DbErr> {
    let mut present = Vec::new();
    for chunk in events.chunks(1000) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 2);
        let mut tuples = Vec::with_capacity(chunk.len());
        for e in chunk {
            push_row(
                &mut tuples,
                &mut values,
                [e.organization_id.into(), e.id.into()],
            );
        }
        let rows = query_all(
            db,
            &format!(
                "SELECT id FROM usage_events WHERE (organization_id, id) IN (VALUES {})",
                tuples.join(", ")
            ),
            values,
        )
        .await?;
        for row in &rows {
            present.push(row.try_get::<Uuid>("", "id")?);
        }
    }
    Ok(present)
}

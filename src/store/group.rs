//! The group writer's statements over several organizations at once (`domain::usage::group`): the
//! group's scope and writer locks in one statement, and a wave's writes in one statement (the
//! counters, the ledger's events, the utilization index, the period rows' peaks and flags, and the
//! usage notifications, `write_wave`). The wave's reads are `recording::views`; its rare writes (a
//! peak that went down, new alerts) are `recording::write_metric_state` and
//! `recording::insert_alerts`.
//!
//! Each statement here touches organizations whose recordings were checked against their callers'
//! scopes before they were queued; on Postgres, row-level security also holds each statement to the
//! group's organizations (`enter`, m20261130_000014).

use chrono::Utc;
use entity::usage_event;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Value};
use uuid::Uuid;

use super::{push_row, query_all, query_one};
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

/// A wave's writes (Postgres), made by one statement (`write_wave`).
pub struct WaveWrites<'a> {
    pub counters: &'a [CounterWrite<'a>],
    pub events: &'a [usage_event::Model],
    /// Rows of the utilization index: (organization, period, metric, utilization, exceeded).
    pub index: &'a [(OrganizationId, Period, &'a str, f64, bool)],
    /// Period rows' peak and flags, each when it changed; at most one for each row.
    pub periods: &'a [PeriodWrite],
    /// Notifications queued with the writes (delivered at commit): the channel, the payloads.
    pub notify: (&'a str, &'a [String]),
}

/// A period row's writes in a wave: its peak utilization, and its flags (`has_exceeded_limits`,
/// `exceeded_limits_details`), each only when it changed (None: kept as it is).
pub struct PeriodWrite {
    pub org: OrganizationId,
    pub period: Period,
    pub peak: Option<f64>,
    pub flags: Option<(bool, serde_json::Value)>,
}

/// What a wave's statement wrote.
pub struct WaveWritten {
    /// Every counter held what the lock's read found, and every period row written was there
    /// (false: a writer outside the lock moved or removed one, and the caller undoes the
    /// transaction rather than lose a write).
    pub rows_held: bool,
    /// Events the ledger took (fewer than given: a key was taken by a writer outside the lock).
    pub events: u64,
}

// The rows travel as JSON arrays of objects (`json_to_recordset`), so the statement's text is the
// same whatever the wave's size: one prepared statement and one generic plan for every wave.
// Dates and times go as text, utilizations as Rust's shortest round-trip text of the f64 (which
// Postgres's float8 reads back exactly, `inf` and `NaN` included), integers as JSON integers. A period
// row's details go through jsonb, as the driver binds them elsewhere, so they are stored in the same
// text whichever statement writes them.

#[derive(serde::Serialize)]
struct MovedRow<'a> {
    o: Uuid,
    p: String,
    m: &'a str,
    b: i64,
    c: i64,
    u: i64,
}

#[derive(serde::Serialize)]
struct NewRow<'a> {
    o: Uuid,
    p: String,
    m: &'a str,
    u: i64,
}

#[derive(serde::Serialize)]
struct EventRow<'a> {
    o: Uuid,
    id: Uuid,
    m: &'a str,
    k: String,
    q: i64,
    p: String,
    key: Option<&'a str>,
    r: Option<&'a str>,
    a: Option<&'a str>,
    ov: bool,
    ch: i64,
    at: String,
    rec: String,
}

#[derive(serde::Serialize)]
struct IndexRow<'a> {
    o: Uuid,
    p: String,
    m: &'a str,
    u: String,
    x: bool,
}

#[derive(serde::Serialize)]
struct PeriodRow<'a> {
    o: Uuid,
    p: String,
    u: Option<String>,
    x: Option<bool>,
    d: Option<&'a serde_json::Value>,
}

fn day(d: chrono::NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// Microseconds, truncated, as the driver binds a time (Postgres would round finer digits).
fn instant(t: &chrono::DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn json<T: serde::Serialize>(rows: &[T]) -> Result<String, DbErr> {
    serde_json::to_string(rows).map_err(|e| DbErr::Custom(format!("a wave's rows as JSON: {e}")))
}

/// The wave's writes in one statement (Postgres; waves run there alone): the counters that exist
/// (each only if it still holds what the lock's read found) and the new ones, the ledger's events
/// (an event whose key is taken is skipped), the utilization index's rows, the period rows' peaks
/// and flags, and the usage notifications. Each part is a data-modifying CTE; they touch different tables, or
/// different rows of one (a counter is either moved or created), so no part needs to see another's
/// effect.
pub async fn write_wave<C: ConnectionTrait>(
    db: &C,
    w: &WaveWrites<'_>,
) -> Result<WaveWritten, DbErr> {
    let (moved, new): (Vec<&CounterWrite>, Vec<&CounterWrite>) =
        w.counters.iter().partition(|c| c.before.is_some());
    let moved: Vec<MovedRow> = moved
        .iter()
        .map(|c| {
            let (b, credits) = c.before.unwrap_or_default();
            MovedRow {
                o: c.org.0,
                p: day(c.period.start),
                m: c.metric,
                b,
                c: credits,
                u: c.used,
            }
        })
        .collect();
    let new: Vec<NewRow> = new
        .iter()
        .map(|c| NewRow {
            o: c.org.0,
            p: day(c.period.start),
            m: c.metric,
            u: c.used,
        })
        .collect();
    let events: Vec<EventRow> = w
        .events
        .iter()
        .map(|e| EventRow {
            o: e.organization_id,
            id: e.id,
            m: &e.metric_code,
            k: sea_orm::ActiveEnum::to_value(&e.kind),
            q: e.quantity,
            p: day(e.period_start),
            key: e.idempotency_key.as_deref(),
            r: e.reference.as_deref(),
            a: e.actor.as_deref(),
            ov: e.overage,
            ch: e.charge,
            at: instant(&e.occurred_at),
            rec: instant(&e.recorded_at),
        })
        .collect();
    let index: Vec<IndexRow> = w
        .index
        .iter()
        .map(|(org, period, metric, u, x)| IndexRow {
            o: org.0,
            p: day(period.start),
            m: metric,
            u: u.to_string(),
            x: *x,
        })
        .collect();
    let periods: Vec<PeriodRow> = w
        .periods
        .iter()
        .map(|r| PeriodRow {
            o: r.org.0,
            p: day(r.period.start),
            u: r.peak.map(|u| u.to_string()),
            x: r.flags.as_ref().map(|f| f.0),
            d: r.flags.as_ref().map(|f| &f.1),
        })
        .collect();
    let values: Vec<Value> = vec![
        Utc::now().into(),
        json(&moved)?.into(),
        json(&new)?.into(),
        json(&events)?.into(),
        json(&index)?.into(),
        json(&periods)?.into(),
        w.notify.0.into(),
        json(w.notify.1)?.into(),
    ];
    let row = query_one(db, &WAVE_WRITE, values)
        .await?
        .ok_or_else(|| DbErr::Custom("a wave's write answered no row".into()))?;
    let moved_n: i64 = row.try_get("", "moved")?;
    let created_n: i64 = row.try_get("", "created")?;
    let events_n: i64 = row.try_get("", "events")?;
    let periods_n: i64 = row.try_get("", "periods")?;
    Ok(WaveWritten {
        rows_held: moved_n == moved.len() as i64
            && created_n == new.len() as i64
            && periods_n == periods.len() as i64,
        events: events_n.max(0) as u64,
    })
}

/// The condition that names an update's rows by the keys of the JSON rows in parameter `param`
/// (their `o` and `p`), on the table aliased `alias`. The planner takes a JSON array for 100 rows,
/// and would join it to a table of a few thousand rows by reading the whole table; keys named as
/// `= ANY (ARRAY(..))` are answered by the primary key's index, so a wave reads only its own rows
/// at any table size.
fn named_keys(alias: &str, param: &str) -> String {
    format!(
        "{alias}.organization_id = ANY (ARRAY(SELECT (j->>'o')::uuid FROM json_array_elements({param}::json) AS j)) \
         AND {alias}.period_start = ANY (ARRAY(SELECT (j->>'p')::date FROM json_array_elements({param}::json) AS j))"
    )
}

/// `write_wave`'s text. The index part needs no RETURNING: a data-modifying CTE runs to completion
/// whether or not the query reads it.
static WAVE_WRITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let index = super::utilization::upsert_index_from(
        "SELECT v.o, v.p, v.m, v.u, v.x FROM json_to_recordset($5::json) AS v(o uuid, p date, m text, u float8, x boolean)",
    );
    let events = super::recording::EVENT_COLUMNS;
    let (counters_keys, periods_keys) = (named_keys("c", "$2"), named_keys("r", "$6"));
    format!(
        "WITH moved AS ( \
           UPDATE usage_counters AS c SET used = v.u, updated_at = $1 \
           FROM json_to_recordset($2::json) AS v(o uuid, p date, m text, b bigint, c bigint, u bigint) \
           WHERE {counters_keys} \
             AND c.organization_id = v.o AND c.period_start = v.p AND c.metric_code = v.m \
             AND c.used = v.b AND c.credits = v.c \
           RETURNING 1), \
         created AS ( \
           INSERT INTO usage_counters (organization_id, period_start, metric_code, used, credits, updated_at) \
           SELECT v.o, v.p, v.m, v.u, 0, $1 FROM json_to_recordset($3::json) AS v(o uuid, p date, m text, u bigint) \
           ON CONFLICT (organization_id, period_start, metric_code) DO NOTHING \
           RETURNING 1), \
         events AS ( \
           INSERT INTO usage_events ({events}) \
           SELECT e.o, e.id, e.m, e.k, e.q, e.p, e.key, e.r, e.a, e.ov, e.ch, e.at, e.rec \
           FROM json_to_recordset($4::json) AS e(o uuid, id uuid, m text, k text, q bigint, p date, key text, \
             r text, a text, ov boolean, ch bigint, at timestamptz, rec timestamptz) \
           ON CONFLICT (organization_id, idempotency_key) DO NOTHING \
           RETURNING 1), \
         indexed AS ({index}), \
         periods AS ( \
           UPDATE organization_usage AS r SET peak_utilization_pct = COALESCE(v.u, r.peak_utilization_pct), \
             has_exceeded_limits = COALESCE(v.x, r.has_exceeded_limits), \
             exceeded_limits_details = COALESCE(v.d::json, r.exceeded_limits_details), updated_at = $1 \
           FROM json_to_recordset($6::json) AS v(o uuid, p date, u float8, x boolean, d jsonb) \
           WHERE {periods_keys} \
             AND r.organization_id = v.o AND r.period_start = v.p \
           RETURNING 1) \
         SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM created) AS created, \
           (SELECT count(*) FROM events) AS events, (SELECT count(*) FROM periods) AS periods, \
           (SELECT count(pg_notify($7, n)) FROM json_array_elements_text($8::json) AS n) AS notified"
    )
});

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

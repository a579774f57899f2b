//! The SQL of a recording, fused to as few statements as the engines allow (ARCHITECTURE's write
//! path): the organization's writer lock with the caller's scope, one read of everything the rules
//! need, the counter's upsert with its HARD cap, the ledger insert (one statement with the upsert on
//! Postgres), the period's flags only when they change, and the new alerts in one insert.
//!
//! Every writer of an organization's usage holds its lock (`lock_org`): on Postgres a transaction
//! advisory lock on `lock_key(org)`, always taken in ascending key order by a transaction that
//! locks several organizations, so that no two writers can deadlock; on SQLite writers are
//! serialized by the process's writer turn. Whatever is read after the lock is current until commit.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::enums::{AlertKind, Enforcement};
use entity::{organization, usage_alert, usage_event};
use sea_orm::{ActiveEnum, ConnectionTrait, DbBackend, DbErr, FromQueryResult, QueryResult, Value};
use uuid::Uuid;

use super::{execute, query_all, query_one};
use crate::domain::{OrganizationId, Period, Scope};

/// The 64-bit key of an organization's writer lock: the last eight bytes of its id (random in both
/// UUIDv4 and UUIDv7). Transactions that lock several organizations lock them in ascending key.
pub fn lock_key(org: OrganizationId) -> i64 {
    let b = org.0.as_bytes();
    i64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]])
}

/// Takes the organization's writer lock until the transaction ends (Postgres; SQLite's writers are
/// serialized by the writer turn).
pub async fn lock_org<C: ConnectionTrait>(db: &C, org: OrganizationId) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    execute(
        db,
        "SELECT pg_advisory_xact_lock($1)",
        vec![lock_key(org).into()],
    )
    .await
    .map(|_| ())
}

/// Sets the caller's scope and takes the organization's writer lock, in one statement (Postgres):
/// a group transaction carries many callers' recordings, each under its own scope.
pub async fn enter<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    let (org_setting, platform) = match scope {
        Scope::Platform => (String::new(), "on"),
        Scope::Tenant(o) => (o.0.to_string(), "off"),
    };
    // The target list is evaluated left to right: the scope is set before the lock is taken. The
    // group's list of organizations (`group::enter`) is emptied: this caller sees its own scope.
    execute(
        db,
        "SELECT set_config('tollgate.org_id', $1, true), set_config('tollgate.platform', $2, true), \
         set_config('tollgate.org_ids', '', true), pg_advisory_xact_lock($3)",
        vec![org_setting.into(), platform.into(), lock_key(org).into()],
    )
    .await
    .map(|_| ())
}

/// A limit of the organization's plan, as stored.
#[derive(Debug, Clone, Copy)]
pub struct StoredLimit {
    pub included: Option<i64>,
    pub enforcement: Enforcement,
    pub overage_unit_price: Option<i64>,
}

/// The period row's state when it exists.
#[derive(Debug, Clone)]
pub struct PeriodRow {
    pub epoch: i32,
    pub exceeded: bool,
    pub details: serde_json::Value,
    /// The highest utilization of the limited metrics (the utilization index), None when the plan
    /// limits none or the row's state was never written.
    pub peak: Option<f64>,
}

/// Everything a recording's rules need, read in one statement under the lock.
#[derive(Debug, Clone)]
pub struct RecordingView {
    pub org: organization::Model,
    /// Every limit of the organization's plan, by metric code.
    pub limits: HashMap<String, StoredLimit>,
    /// The period row, when the period has one.
    pub period: Option<PeriodRow>,
    /// The recorded metric's counter in the period (used, credits), when it has a row.
    pub counter: Option<(i64, i64)>,
    /// The recorded metric's row of the utilization index (utilization, exceeded), when it has one.
    pub indexed: Option<(f64, bool)>,
    /// The asked idempotency keys already taken by events of the organization.
    pub taken: Vec<String>,
    /// The alerts already raised for the metric in the period's epoch.
    pub fired: Vec<AlertKind>,
}

/// Reads the organization (in scope), its plan's limits, the period row, the metric's counter, which
/// of `keys` are taken and the alerts already raised: one statement. None when the organization is
/// missing or out of scope.
pub async fn view<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    period: Period,
    metric: &str,
    keys: &[&str],
) -> Result<Option<RecordingView>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    let ask = ViewAsk {
        org,
        period,
        metric,
        keys: keys.to_vec(),
    };
    Ok(views(db, &[ask]).await?.pop().flatten())
}

/// What one recording view reads: an organization's metric in a period, and the keys to look up.
pub struct ViewAsk<'a> {
    pub org: OrganizationId,
    pub period: Period,
    pub metric: &'a str,
    pub keys: Vec<&'a str>,
}

/// The views of several recordings (`view`): one answer for each ask, in order, None where the
/// organization is missing or hidden by the transaction's scope (row-level security; the caller
/// checked each ask against its caller's scope). One statement, one row an ask. Each ask carries its
/// keys as a JSON array, looked up in its own organization alone; the plan's limits and the taken
/// keys come back as JSON arrays (`json_list`), so the organization's columns and the alerts'
/// lookups are not repeated for each limit, and the statement's text does not depend on how many
/// keys are asked.
pub async fn views<C: ConnectionTrait>(
    db: &C,
    asks: &[ViewAsk<'_>],
) -> Result<Vec<Option<RecordingView>>, DbErr> {
    if asks.is_empty() {
        return Ok(vec![]);
    }
    let backend = db.get_database_backend();
    let fired = |kind: AlertKind| {
        format!(
            "EXISTS (SELECT 1 FROM usage_alerts a WHERE a.organization_id = o.id AND a.period_start = q.column2 \
             AND a.metric_code = q.column3 AND a.kind = '{}' AND a.alert_epoch = COALESCE(u.alert_epoch, 0)) AS fired_{}",
            kind.to_value(),
            kind.to_value().to_lowercase()
        )
    };
    let mut values: Vec<Value> = Vec::with_capacity(asks.len() * 5);
    let mut rows = Vec::with_capacity(asks.len());
    for (n, ask) in asks.iter().enumerate() {
        let keys = serde_json::to_string(&ask.keys).map_err(|e| DbErr::Custom(e.to_string()))?;
        super::push_row(
            &mut rows,
            &mut values,
            [
                ask.org.0.into(),
                ask.period.start.into(),
                ask.metric.into(),
                (n as i64).into(),
                keys.into(),
            ],
        );
    }
    super::pad_rows(backend, &mut rows, &mut values, 5, 0);
    // Each asked key a lookup in the (organization, key) index: on Postgres as an array, which a
    // generic plan still probes key by key (a subquery there may be planned as a scan of the
    // organization's ledger).
    let taken = match backend {
        DbBackend::Postgres => {
            "e.idempotency_key = ANY (ARRAY(SELECT json_array_elements_text(q.column5::json)))"
        }
        _ => "e.idempotency_key IN (SELECT value FROM json_each(q.column5))",
    };
    // CROSS JOIN keeps SQLite's planner on the asks first (a lookup by key in each table); Postgres
    // plans it as the inner join it is.
    let sql = format!(
        "SELECT q.column4 AS q_n, o.*, \
           u.alert_epoch AS u_epoch, u.has_exceeded_limits AS u_exceeded, u.exceeded_limits_details AS u_details, \
           u.peak_utilization_pct AS u_peak, x.utilization_pct AS x_util, x.exceeded AS x_exceeded, \
           c.used AS c_used, c.credits AS c_credits, \
           (SELECT {} FROM usage_events e WHERE e.organization_id = o.id AND {taken}) AS e_keys, \
           {}, {}, {}, \
           (SELECT {} FROM plan_limits l WHERE l.plan_id = o.plan_id) AS l_limits \
         FROM (VALUES {}) AS q CROSS JOIN organizations o \
         LEFT JOIN organization_usage u ON u.organization_id = o.id AND u.period_start = q.column2 \
         LEFT JOIN usage_counters c ON c.organization_id = o.id AND c.period_start = q.column2 AND c.metric_code = q.column3 \
         LEFT JOIN usage_utilization x ON x.organization_id = o.id AND x.period_start = q.column2 AND x.metric_code = q.column3 \
         WHERE o.id = q.column1",
        json_list(backend, "e.idempotency_key"),
        fired(AlertKind::NearLimit),
        fired(AlertKind::LimitExceeded),
        fired(AlertKind::OverageStarted),
        json_list(
            backend,
            &json_row(
                backend,
                "l.metric_code, l.included, l.enforcement, l.overage_unit_price"
            )
        ),
        rows.join(", "),
    );
    let found = query_all(db, &sql, values).await?;
    let mut views: Vec<Option<RecordingView>> = asks.iter().map(|_| None).collect();
    for row in &found {
        let n = row.try_get::<i64>("", "q_n")?;
        let Some(ask) = usize::try_from(n).ok().filter(|n| *n < asks.len()) else {
            continue;
        };
        views[ask] = Some(view_of(row)?);
    }
    Ok(views)
}

/// A JSON array of the expression's values over a subquery's rows, as text (`[]` without rows).
fn json_list(backend: DbBackend, expr: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("COALESCE(json_agg({expr}), '[]')::text"),
        _ => format!("json_group_array({expr})"),
    }
}

/// A JSON array of the columns' values (integers stay exact: both engines write them as digits).
fn json_row(backend: DbBackend, columns: &str) -> String {
    match backend {
        DbBackend::Postgres => format!("json_build_array({columns})"),
        _ => format!("json_array({columns})"),
    }
}

/// One ask's row of `views`, as its view.
fn view_of(first: &QueryResult) -> Result<RecordingView, DbErr> {
    let org_model = organization::Model::from_query_result(first, "")?;
    let period_state = match first.try_get::<Option<i32>>("", "u_epoch")? {
        Some(epoch) => Some(PeriodRow {
            epoch,
            exceeded: first.try_get::<bool>("", "u_exceeded")?,
            details: first.try_get::<serde_json::Value>("", "u_details")?,
            peak: first.try_get::<Option<f64>>("", "u_peak")?,
        }),
        None => None,
    };
    let counter = match first.try_get::<Option<i64>>("", "c_used")? {
        Some(used) => Some((used, first.try_get::<i64>("", "c_credits")?)),
        None => None,
    };
    let indexed = match first.try_get::<Option<f64>>("", "x_util")? {
        Some(u) => Some((u, first.try_get::<bool>("", "x_exceeded")?)),
        None => None,
    };
    // The statement looked up this ask's keys alone, in its organization, where a key is unique.
    let taken: Vec<String> = parse_json(&first.try_get::<String>("", "e_keys")?, "taken keys")?;
    let mut fired = Vec::new();
    for kind in [
        AlertKind::NearLimit,
        AlertKind::LimitExceeded,
        AlertKind::OverageStarted,
    ] {
        let column = format!("fired_{}", kind.to_value().to_lowercase());
        if first.try_get::<bool>("", &column)? {
            fired.push(kind);
        }
    }
    let listed: Vec<(String, Option<i64>, String, Option<i64>)> =
        parse_json(&first.try_get::<String>("", "l_limits")?, "plan limits")?;
    let mut limits = HashMap::with_capacity(listed.len());
    for (code, included, enforcement, overage_unit_price) in listed {
        let enforcement = Enforcement::try_from_value(&enforcement)?;
        limits.insert(
            code,
            StoredLimit {
                included,
                enforcement,
                overage_unit_price,
            },
        );
    }
    Ok(RecordingView {
        org: org_model,
        limits,
        period: period_state,
        counter,
        indexed,
        taken,
        fired,
    })
}

/// A JSON value the statement built, or a decoding error naming what it was.
fn parse_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T, DbErr> {
    serde_json::from_str(text).map_err(|e| DbErr::Type(format!("{what}: {e}")))
}

/// How the recorded counter moves.
#[derive(Debug, Clone, Copy)]
pub enum Move {
    /// used = used + delta (a COUNTER)
    Add(i64),
    /// used = value (a GAUGE reading)
    Set(i64),
}

/// A recording to apply: the counter's move and the ledger event that claims the key.
pub struct Apply<'a> {
    pub org: OrganizationId,
    pub period: Period,
    pub metric: &'a str,
    pub movement: Move,
    /// The plan's included amount under HARD enforcement.
    pub hard_cap: Option<i64>,
    pub event_id: Uuid,
    pub quantity: i64,
    pub key: Option<&'a str>,
    pub reference: Option<&'a str>,
    pub actor: &'a str,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    /// Postgres: the NOTIFY payload that tells every replica the organization's usage changed, sent
    /// by the same statement when (and only if) the recording is applied.
    pub notify: Option<(&'a str, String)>,
    /// Postgres: the index and period row's change, written by the same statement.
    pub index: Option<&'a IndexChange>,
}

/// What an applied recording left: the counter's (used, credits), and whether the ledger event was
/// inserted (false: its key was taken after all, and the caller must undo the transaction).
pub struct Applied {
    pub used: i64,
    pub credits: i64,
    pub inserted: bool,
}

/// Applies a recording: the counter's upsert, refused in the same statement by the HARD cap (or by
/// the BIGINT guard), and the ledger insert that claims the key. One statement on Postgres (the insert
/// only happens when the upsert did), two on SQLite. None when the counter refused.
///
/// A new row bypasses an upsert's `WHERE`: the caller refuses a first amount above the cap itself.
pub async fn apply<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    a: &Apply<'_>,
) -> Result<Option<Applied>, DbErr> {
    if !scope.allows(a.org) {
        return Ok(None);
    }
    let (set, cap, guard, amount) = match a.movement {
        Move::Add(d) => (
            "used = usage_counters.used + $4",
            "usage_counters.used - usage_counters.credits <= $6 - $4",
            if d >= 0 {
                format!(" AND usage_counters.used <= {} - $4", i64::MAX)
            } else {
                format!(" AND usage_counters.used >= {} - $4", i64::MIN)
            },
            d,
        ),
        Move::Set(v) => (
            "used = $4",
            "$4 - usage_counters.credits <= $6",
            String::new(),
            v,
        ),
    };
    let cap = if a.hard_cap.is_some() {
        format!(" AND {cap}")
    } else {
        String::new()
    };
    let upsert = format!(
        "INSERT INTO usage_counters (organization_id, period_start, metric_code, used, credits, updated_at) \
         VALUES ($1, $2, $3, $4, 0, $5) \
         ON CONFLICT (organization_id, period_start, metric_code) DO UPDATE SET {set}, updated_at = $5 \
         WHERE 1 = 1{guard}{cap} RETURNING used, credits"
    );
    let mut values: Vec<Value> = vec![
        a.org.0.into(),
        a.period.start.into(),
        a.metric.into(),
        amount.into(),
        a.recorded_at.into(),
        a.hard_cap.unwrap_or(0).into(),
    ];
    let event_values: Vec<Value> = vec![
        a.event_id.into(),
        a.quantity.into(),
        a.key.map(str::to_owned).into(),
        a.reference.map(str::to_owned).into(),
        a.actor.into(),
        a.occurred_at.into(),
    ];
    let event_columns = EVENT_COLUMNS;
    if db.get_database_backend() == DbBackend::Postgres {
        values.extend(event_values);
        let notify = match &a.notify {
            Some((channel, payload)) => {
                values.push((*channel).into());
                values.push(payload.clone().into());
                ", pg_notify($13, $14)".to_owned()
            }
            None => String::new(),
        };
        let mut more = String::new();
        let change = a.index.filter(|c| !c.is_empty());
        if let Some(change) = change {
            if let Some((utilization, exceeded)) = change.index {
                values.push(utilization.into());
                values.push(exceeded.into());
                let n = values.len();
                more.push_str(&format!(
                    ", x AS (INSERT INTO usage_utilization (organization_id, period_start, metric_code, utilization_pct, exceeded) \
                     SELECT $1, $2, $3, ${}, ${n} FROM c ON CONFLICT (organization_id, period_start, metric_code) \
                     DO UPDATE SET utilization_pct = excluded.utilization_pct, exceeded = excluded.exceeded)",
                    n - 1
                ));
            }
            let mut sets = vec!["updated_at = $5".to_owned()];
            if let Some((exceeded, details)) = &change.flags {
                values.push((*exceeded).into());
                sets.push(format!("has_exceeded_limits = ${}", values.len()));
                values.push(details.clone().into());
                sets.push(format!("exceeded_limits_details = ${}", values.len()));
            }
            if let Peak::Set(p) = change.peak {
                values.push(p.into());
                sets.push(format!("peak_utilization_pct = ${}", values.len()));
            }
            if sets.len() > 1 {
                more.push_str(&format!(
                    ", p AS (UPDATE organization_usage SET {} FROM c \
                     WHERE organization_usage.organization_id = $1 AND organization_usage.period_start = $2)",
                    sets.join(", ")
                ));
            }
        }
        let sql = format!(
            "WITH c AS ({upsert}), \
             e AS (INSERT INTO usage_events ({event_columns}) \
                   SELECT $1, $7, $3, 'USAGE', $8, $2, $9, $10, $11, false, 0, $12, $5 FROM c \
                   ON CONFLICT (organization_id, idempotency_key) DO NOTHING RETURNING id){more} \
             SELECT c.used, c.credits, (SELECT COUNT(*) FROM e) AS inserted{notify} FROM c"
        );
        let Some(row) = query_one(db, &sql, values).await? else {
            return Ok(None);
        };
        if change.is_some_and(|c| c.peak == Peak::Highest) {
            highest_peak(db, a.org, a.period).await?;
        }
        return Ok(Some(Applied {
            used: row.try_get("", "used")?,
            credits: row.try_get("", "credits")?,
            inserted: row.try_get::<i64>("", "inserted")? > 0,
        }));
    }
    // SQLite has no writes inside WITH: the statements go as one script, one round trip to the
    // connection's thread, numbered into one list. The ledger insert runs only when the counter
    // moved (`changes()` of the upsert), `SELECT changes()` then says whether it claimed the key,
    // and the index row and the period row follow (`metric_state_statements`). A refusal or an
    // unclaimed key fails the caller, which undoes the transaction.
    values.extend(event_values);
    let mut script = vec![
        upsert,
        format!(
            "INSERT INTO usage_events ({event_columns}) \
             SELECT $1, $7, $3, 'USAGE', $8, $2, $9, $10, $11, false, 0, $12, $5 WHERE changes() > 0 \
             ON CONFLICT (organization_id, idempotency_key) DO NOTHING"
        ),
        "SELECT changes() AS inserted".to_owned(),
    ];
    if let Some(change) = a.index.filter(|c| !c.is_empty()) {
        let (index, update) = metric_state_statements(change, &mut values, false);
        script.extend([index, update].into_iter().flatten());
    }
    // One list for the whole script: `store::stmt` binds SQLite's parameters by position.
    let rows = query_all(db, &script.join("; "), values).await?;
    let mut counter = None;
    let mut inserted = 0i64;
    for row in &rows {
        match row.try_get::<i64>("", "inserted") {
            Ok(n) => inserted = n,
            Err(_) => counter = Some((row.try_get("", "used")?, row.try_get("", "credits")?)),
        }
    }
    Ok(counter.map(|(used, credits)| Applied {
        used,
        credits,
        inserted: inserted > 0,
    }))
}

/// Inserts the alerts that did not fire yet (one statement); answers those that are new. On Postgres,
/// with `channel`, each new alert is announced by the same statement (NOTIFY, delivered on commit).
pub async fn insert_alerts<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    alerts: Vec<usage_alert::Model>,
    channel: Option<&str>,
    payload: impl Fn(&usage_alert::Model) -> String,
) -> Result<Vec<usage_alert::Model>, DbErr> {
    let alerts: Vec<_> = alerts
        .into_iter()
        .filter(|a| scope.allows(OrganizationId(a.organization_id)))
        .collect();
    if alerts.is_empty() {
        return Ok(vec![]);
    }
    let mut values: Vec<Value> = Vec::new();
    let mut rows = Vec::new();
    for a in &alerts {
        super::push_row(
            &mut rows,
            &mut values,
            [
                a.organization_id.into(),
                a.id.into(),
                a.metric_code.clone().into(),
                a.kind.to_value().into(),
                a.period_start.into(),
                a.alert_epoch.into(),
                a.threshold_pct.into(),
                a.used.into(),
                a.allowance.into(),
                a.utilization_pct.into(),
                a.created_at.into(),
            ],
        );
    }
    let notify = match channel {
        Some(channel) if db.get_database_backend() == DbBackend::Postgres => {
            values.push(channel.into());
            let channel_param = values.len();
            let mut cases = String::new();
            for a in &alerts {
                values.push(a.id.into());
                values.push(payload(a).into());
                cases.push_str(&format!(
                    " WHEN ${} THEN ${}",
                    values.len() - 1,
                    values.len()
                ));
            }
            format!(", pg_notify(${channel_param}, CASE id{cases} END)")
        }
        _ => String::new(),
    };
    let sql = format!(
        "INSERT INTO usage_alerts (organization_id, id, metric_code, kind, period_start, alert_epoch, \
           threshold_pct, used, allowance, utilization_pct, created_at) VALUES {} \
         ON CONFLICT (organization_id, period_start, metric_code, kind, alert_epoch) DO NOTHING \
         RETURNING id{notify}",
        rows.join(", ")
    );
    let inserted: Vec<Uuid> = query_all(db, &sql, values)
        .await?
        .iter()
        .map(|r| r.try_get::<Uuid>("", "id"))
        .collect::<Result<_, _>>()?;
    Ok(alerts
        .into_iter()
        .filter(|a| inserted.contains(&a.id))
        .collect())
}

/// Adds `total` to a COUNTER (the accepted recordings of a batch, decided under the lock), refused in
/// the same statement if it would pass the HARD cap or the BIGINT range; on Postgres with the NOTIFY
/// of the change. Answers the new (used, credits).
#[allow(clippy::too_many_arguments)]
pub async fn add_to_counter<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    period: Period,
    metric: &str,
    total: i64,
    hard_cap: Option<i64>,
    notify: Option<(&str, String)>,
) -> Result<Option<(i64, i64)>, DbErr> {
    if !scope.allows(org) {
        return Ok(None);
    }
    let cap = if hard_cap.is_some() {
        " AND usage_counters.used - usage_counters.credits <= $6 - $4"
    } else {
        ""
    };
    let mut values: Vec<Value> = vec![
        org.0.into(),
        period.start.into(),
        metric.into(),
        total.into(),
        Utc::now().into(),
        hard_cap.unwrap_or(0).into(),
    ];
    let notify = match notify {
        Some((channel, payload)) if db.get_database_backend() == DbBackend::Postgres => {
            values.push(channel.into());
            values.push(payload.into());
            ", pg_notify($7, $8)"
        }
        _ => "",
    };
    let sql = format!(
        "INSERT INTO usage_counters (organization_id, period_start, metric_code, used, credits, updated_at) \
         VALUES ($1, $2, $3, $4, 0, $5) \
         ON CONFLICT (organization_id, period_start, metric_code) DO UPDATE SET \
           used = usage_counters.used + $4, updated_at = $5 \
         WHERE usage_counters.used <= {} - $4{cap} RETURNING used, credits{notify}",
        i64::MAX
    );
    let Some(row) = query_one(db, &sql, values).await? else {
        return Ok(None);
    };
    Ok(Some((
        row.try_get("", "used")?,
        row.try_get("", "credits")?,
    )))
}

/// Appends USAGE events in multi-row inserts; a key already taken inserts nothing for its row.
/// Answers how many rows were inserted.
pub async fn insert_events<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    events: &[usage_event::Model],
) -> Result<u64, DbErr> {
    const COLUMNS: usize = 13;
    let mut inserted = 0;
    for chunk in events.chunks(1000) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * COLUMNS);
        let mut rows = Vec::with_capacity(chunk.len());
        for e in chunk {
            if !scope.allows(OrganizationId(e.organization_id)) {
                continue;
            }
            super::push_row::<COLUMNS>(
                &mut rows,
                &mut values,
                [
                    e.organization_id.into(),
                    e.id.into(),
                    e.metric_code.clone().into(),
                    e.kind.to_value().into(),
                    e.quantity.into(),
                    e.period_start.into(),
                    e.idempotency_key.clone().into(),
                    e.reference.clone().into(),
                    e.actor.clone().into(),
                    e.overage.into(),
                    e.charge.into(),
                    e.occurred_at.into(),
                    e.recorded_at.into(),
                ],
            );
        }
        if rows.is_empty() {
            continue;
        }
        let padded = super::pad_rows(
            db.get_database_backend(),
            &mut rows,
            &mut values,
            COLUMNS,
            0,
        );
        inserted += execute(
            db,
            &format!(
                "INSERT INTO usage_events ({EVENT_COLUMNS}) {} \
                 ON CONFLICT (organization_id, idempotency_key) DO NOTHING",
                super::insert_source(padded, &rows)
            ),
            values,
        )
        .await?;
    }
    Ok(inserted)
}

/// The ledger columns a recording writes, in the order of every insert of recorded events (a
/// recording's own, `insert_events`, a wave's `group::write_wave`).
pub(super) const EVENT_COLUMNS: &str = "organization_id, id, metric_code, kind, quantity, period_start, \
     idempotency_key, reference, actor, overage, charge, occurred_at, recorded_at";

/// What a recording changes in the utilization index and on the period row (`write_metric_state`).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexChange {
    /// The recorded metric's index row (utilization, exceeded), when it changed.
    pub index: Option<(f64, bool)>,
    /// The period row's flags (has_exceeded_limits, exceeded_limits_details), when they changed.
    pub flags: Option<(bool, serde_json::Value)>,
    pub peak: Peak,
}

impl IndexChange {
    pub fn is_empty(&self) -> bool {
        self.index.is_none() && self.flags.is_none() && self.peak == Peak::Keep
    }
}

/// How a recording moves the period row's peak utilization.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Peak {
    Keep,
    Set(f64),
    /// The recorded metric was the peak and went down: the highest of the index rows.
    Highest,
}

/// After a recording moved one limited metric: its row of the utilization index, and the period
/// row's flags and peak when they changed. Postgres: one statement (the period row's update reads
/// the index as it was, so `Peak::Highest` takes a second); SQLite: one per table.
pub async fn write_metric_state<C: ConnectionTrait>(
    db: &C,
    scope: Scope,
    org: OrganizationId,
    period: Period,
    metric: &str,
    change: &IndexChange,
) -> Result<(), DbErr> {
    if !scope.allows(org) || change.is_empty() {
        return Ok(());
    }
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    let mut values: Vec<Value> = vec![org.0.into(), period.start.into(), metric.into()];
    let (upsert, update) = metric_state_statements(change, &mut values, postgres);
    // Numbering is shared: Postgres runs both as one statement, SQLite each (a statement binds the
    // numbers it names).
    match (upsert, update) {
        (Some(upsert), Some(update)) if postgres => {
            execute(db, &format!("WITH x AS ({upsert}) {update}"), values).await?;
        }
        (upsert, update) => {
            for sql in [upsert, update].into_iter().flatten() {
                execute(db, &sql, values.clone()).await?;
            }
        }
    }
    if postgres && change.peak == Peak::Highest && change.index.is_some() {
        highest_peak(db, org, period).await?;
    }
    Ok(())
}

/// The statements that write `change`: the metric's index row (an upsert) and the period row's
/// flags and peak (an update), numbered into `values`, which holds the organization as $1, the
/// period's start as $2 and the metric as $3. On Postgres a `Peak::Highest` beside an index upsert
/// is left to `highest_peak` (the update would read the index as it was).
fn metric_state_statements(
    change: &IndexChange,
    values: &mut Vec<Value>,
    postgres: bool,
) -> (Option<String>, Option<String>) {
    let (index, flags, peak) = (change.index, change.flags.clone(), change.peak);
    let upsert = index.map(|(utilization, exceeded)| {
        values.push(utilization.into());
        values.push(exceeded.into());
        let n = values.len();
        format!(
            "INSERT INTO usage_utilization (organization_id, period_start, metric_code, utilization_pct, exceeded) \
             VALUES ($1, $2, $3, ${}, ${n}) ON CONFLICT (organization_id, period_start, metric_code) \
             DO UPDATE SET utilization_pct = excluded.utilization_pct, exceeded = excluded.exceeded",
            n - 1
        )
    });
    let mut sets = Vec::new();
    if let Some((exceeded, details)) = flags {
        values.push(exceeded.into());
        sets.push(format!("has_exceeded_limits = ${}", values.len()));
        values.push(details.into());
        sets.push(format!("exceeded_limits_details = ${}", values.len()));
    }
    let highest = "peak_utilization_pct = (SELECT MAX(i.utilization_pct) FROM usage_utilization i \
                   WHERE i.organization_id = $1 AND i.period_start = $2)";
    match peak {
        Peak::Keep => {}
        Peak::Set(p) => {
            values.push(p.into());
            sets.push(format!("peak_utilization_pct = ${}", values.len()));
        }
        Peak::Highest if !postgres || upsert.is_none() => sets.push(highest.to_owned()),
        Peak::Highest => {}
    }
    let update = (!sets.is_empty()).then(|| {
        values.push(Utc::now().into());
        format!(
            "UPDATE organization_usage SET {}, updated_at = ${} WHERE organization_id = $1 AND period_start = $2",
            sets.join(", "),
            values.len()
        )
    });
    (upsert, update)
}

/// The period row's peak as the highest of its index rows (after the recorded metric's row moved).
async fn highest_peak<C: ConnectionTrait>(
    db: &C,
    org: OrganizationId,
    period: Period,
) -> Result<(), DbErr> {
    execute(
        db,
        "UPDATE organization_usage SET peak_utilization_pct = (SELECT MAX(i.utilization_pct) FROM usage_utilization i \
           WHERE i.organization_id = $1 AND i.period_start = $2) WHERE organization_id = $1 AND period_start = $2",
        vec![org.0.into(), period.start.into()],
    )
    .await
    .map(|_| ())
}

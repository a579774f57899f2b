//! Data written straight in SQL, for measurements whose scale the API would take too long to reach:
//! a big ledger (`bulk_ledger`) and many organizations (`bulk_orgs`). Both go through the server's
//! own store functions on a platform-scoped `Db` (so row-level security applies on Postgres) and
//! write rows shaped like the server's: UUIDs as the engine stores them (`uuid` on Postgres, 16-byte
//! blobs on SQLite), dates and instants bound as values.

use anyhow::{Context, Result};
use sea_orm::ConnectionTrait;
use tollgate::store::db::Db;

/// The engine's SQL for a series 1..=$n (as `s.n`) and a UUIDv7-shaped id from a millisecond
/// parameter and the row number: unique per millisecond prefix, ordered by the row number.
fn series_and_id(db: &Db, count: usize, ms: usize) -> (String, String) {
    if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        (
            format!("SELECT g AS n FROM generate_series(1, ${count}) AS g"),
            format!(
                "(lpad(to_hex(${ms}::bigint), 12, '0') || '70008000' || lpad(to_hex(s.n), 12, '0'))::uuid"
            ),
        )
    } else {
        (
            format!(
                "WITH RECURSIVE q(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM q WHERE n < ${count}) SELECT n FROM q"
            ),
            format!("unhex(printf('%012x70008000%012x', ${ms}, s.n))"),
        )
    }
}

/// Appends `n` USAGE events of 1 booking to `org`'s current period in one statement, and sets its
/// counter to match (so recompute stays clean).
pub async fn bulk_ledger(db: &Db, org: &str, n: usize) -> Result<()> {
    let org = uuid::Uuid::parse_str(org)?;
    let period = tollgate::domain::Period::current().start;
    let now = chrono::Utc::now();
    // Ids: a day-old millisecond, then the row number: unique per organization and older than
    // anything recorded later.
    let (series, id) = series_and_id(db, 4, 5);
    let sql = format!(
        "INSERT INTO usage_events (organization_id, id, metric_code, kind, quantity, period_start, actor, occurred_at, recorded_at) \
         SELECT $1, {id}, 'bookings', 'USAGE', 10000, $2, 'bench', $3, $3 FROM ({series}) AS s"
    );
    tollgate::store::execute(
        db,
        &sql,
        vec![
            org.into(),
            period.into(),
            now.into(),
            (n as i64).into(),
            (now.timestamp_millis() - 86_400_000).into(),
        ],
    )
    .await?;
    tollgate::store::execute(
        db,
        "INSERT INTO usage_counters (organization_id, period_start, metric_code, used, credits, updated_at) \
         VALUES ($1, $2, 'bookings', $3, 0, $4) \
         ON CONFLICT (organization_id, period_start, metric_code) DO UPDATE SET used = excluded.used",
        vec![org.into(), period.into(), (n as i64 * 10_000).into(), now.into()],
    )
    .await?;
    Ok(())
}

/// Whether `table` has `column` (information_schema on Postgres, pragma_table_info on SQLite).
pub async fn has_column(db: &Db, table: &str, column: &str) -> Result<bool> {
    let sql = if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        "SELECT COUNT(*) AS n FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2"
    } else {
        "SELECT COUNT(*) AS n FROM pragma_table_info($1) WHERE name = $2"
    };
    count(db, sql, vec![table.into(), column.into()])
        .await
        .map(|n| n > 0)
}

/// Whether the database has `table`.
pub async fn has_table(db: &Db, table: &str) -> Result<bool> {
    let sql = if db.get_database_backend() == sea_orm::DbBackend::Postgres {
        "SELECT COUNT(*) AS n FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_name = $1"
    } else {
        "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1"
    };
    count(db, sql, vec![table.into()]).await.map(|n| n > 0)
}

async fn count(db: &Db, sql: &str, values: Vec<sea_orm::Value>) -> Result<i64> {
    let row = tollgate::store::query_one(db, sql, values)
        .await?
        .context("a count answers a row")?;
    Ok(row.try_get::<i64>("", "n")?)
}

/// What `bulk_orgs` wrote: how many organizations it added, the total, and which index columns
/// (or tables) of the platform pages it filled because the schema has them.
pub struct BulkOrgs {
    pub added: usize,
    pub total: usize,
    pub filled: Vec<&'static str>,
}

/// Adds organizations in SQL until there are `n`: each on the Growth plan, with a bookings counter
/// in the current period at a utilization spread like the seed's (organization k at k % 100 percent
/// of Growth's allowance, so a fifth are at 80% or more, none past 100%), and its period row in
/// `organization_usage`.
///
/// The platform pages' index (issue 14 point 4) is derived state that the write path keeps; rows
/// written here bypass the write path, so this fills it too, whichever shape the schema has:
/// - `usage_counters.utilization_pct` (a double per counter),
/// - `organization_usage.peak_utilization_pct` (the highest utilization of the period row),
/// - a `usage_utilization` table (organization, period, metric, utilization_pct, exceeded), one row
///   per metric the plan limits.
///
/// Each is written only when the schema has it (checked first), so the bench runs before and after
/// the index's migration. A new index column is one more entry in the column lists below.
pub async fn bulk_orgs(db: &Db, n: usize) -> Result<BulkOrgs> {
    let existing = count(db, "SELECT COUNT(*) AS n FROM organizations", vec![]).await? as usize;
    if existing >= n {
        return Ok(BulkOrgs {
            added: 0,
            total: existing,
            filled: vec![],
        });
    }
    let add = n - existing;
    let period = tollgate::domain::Period::current();
    let now = chrono::Utc::now();
    // Two days back: apart from bulk_ledger's ids and from anything the server mints.
    let ms = now.timestamp_millis() - 2 * 86_400_000;
    let included: i64 = tollgate::store::query_one(
        db,
        "SELECT l.included AS included FROM plan_limits l JOIN plans p ON p.id = l.plan_id \
         WHERE p.code = 'growth' AND l.metric_code = 'bookings'",
        vec![],
    )
    .await?
    .context("Growth limits bookings")?
    .try_get::<Option<i64>>("", "included")?
    .filter(|i| *i > 0)
    .context("Growth's bookings allowance")?;

    // Every statement binds $1 the rows to add, $2 the ids' millisecond, then its own values from
    // $3 (SQLite counts a statement's parameters by the highest it names: each binds exactly those).
    let (series, id) = series_and_id(db, 1, 2);
    let rows = || -> Vec<sea_orm::Value> { vec![(add as i64).into(), ms.into()] };
    let with = |more: Vec<sea_orm::Value>| {
        let mut v = rows();
        v.extend(more);
        v
    };
    // Organization k uses k % 100 percent of the allowance (scaled by 10^4, as stored).
    let used = format!("((s.n % 100) * {included} / 100)");
    let pct = format!("({used} * 100.0 / {included})");
    let mut filled = Vec::new();

    tollgate::store::execute(
        db,
        &format!(
            "INSERT INTO organizations (id, name, slug, status, plan_id, created_at, updated_at) \
             SELECT {id}, 'Bulk ' || CAST(s.n AS TEXT), 'bulk-' || CAST($2 AS TEXT) || '-' || CAST(s.n AS TEXT), 'ACTIVE', \
                    (SELECT id FROM plans WHERE code = 'growth'), $3, $3 \
             FROM ({series}) AS s"
        ),
        with(vec![now.into()]),
    )
    .await
    .context("bulk organizations")?;

    let (mut cols, mut exprs) = (
        vec![
            "organization_id",
            "period_start",
            "metric_code",
            "used",
            "credits",
            "updated_at",
        ],
        vec![
            id.clone(),
            "$4".into(),
            "'bookings'".into(),
            used.clone(),
            "0".into(),
            "$3".into(),
        ],
    );
    if has_column(db, "usage_counters", "utilization_pct").await? {
        cols.push("utilization_pct");
        exprs.push(pct.clone());
        filled.push("usage_counters.utilization_pct");
    }
    tollgate::store::execute(
        db,
        &format!(
            "INSERT INTO usage_counters ({}) SELECT {} FROM ({series}) AS s",
            cols.join(", "),
            exprs.join(", ")
        ),
        with(vec![now.into(), period.start.into()]),
    )
    .await
    .context("bulk counters")?;

    let (mut cols, mut exprs) = (
        vec![
            "organization_id",
            "period_start",
            "period_end",
            "has_exceeded_limits",
            "exceeded_limits_details",
            "alert_epoch",
            "created_at",
            "updated_at",
        ],
        vec![
            id.clone(),
            "$4".into(),
            "$5".into(),
            "false".into(),
            "'{}'".into(),
            "0".into(),
            "$3".into(),
            "$3".into(),
        ],
    );
    if has_column(db, "organization_usage", "peak_utilization_pct").await? {
        cols.push("peak_utilization_pct");
        exprs.push(pct.clone());
        filled.push("organization_usage.peak_utilization_pct");
    }
    tollgate::store::execute(
        db,
        &format!(
            "INSERT INTO organization_usage ({}) SELECT {} FROM ({series}) AS s",
            cols.join(", "),
            exprs.join(", ")
        ),
        with(vec![now.into(), period.start.into(), period.end().into()]),
    )
    .await
    .context("bulk period rows")?;

    if has_table(db, "usage_utilization").await? {
        // One row per metric Growth limits: bookings at its counter's utilization, the others
        // (no counter: nothing used) at 0; none is past its allowance.
        tollgate::store::execute(
            db,
            &format!(
                "INSERT INTO usage_utilization (organization_id, period_start, metric_code, utilization_pct, exceeded) \
                 SELECT {id}, $3, l.metric_code, CASE WHEN l.metric_code = 'bookings' THEN {pct} ELSE 0 END, false \
                 FROM ({series}) AS s CROSS JOIN \
                   (SELECT pl.metric_code FROM plan_limits pl JOIN plans p ON p.id = pl.plan_id \
                    WHERE p.code = 'growth' AND pl.included IS NOT NULL) AS l"
            ),
            with(vec![period.start.into()]),
        )
        .await
        .context("bulk usage_utilization")?;
        filled.push("usage_utilization");
    }
    if db.is_postgres() {
        // The statistics the planner would have at this size: autovacuum analyzes a table within
        // a minute of a tenfold growth, and a page measured before then is planned for 1,000
        // organizations (one page alone took 234 ms instead of a few; BENCHMARKS.md, eighth pass).
        // The tables written above, and no other (the whole database holds the big ledger too).
        let mut tables = vec!["organizations", "usage_counters", "organization_usage"];
        if filled.contains(&"usage_utilization") {
            tables.push("usage_utilization");
        }
        tollgate::store::execute(db, &format!("ANALYZE {}", tables.join(", ")), vec![])
            .await
            .context("analyze after the bulk insert")?;
    }
    Ok(BulkOrgs {
        added: add,
        total: n,
        filled,
    })
}

//! The bare-SQL floor of the minimal recording, on the database the server uses, in the harness's
//! own loop: no HTTP, no GraphQL, no engine. A recording is the counter's update with its cap check
//! and the ledger insert, nothing else (no idempotency key, no alerts, no flags).
//!
//! - Postgres: ONE statement (a data-modifying CTE: the insert happens only when the update did),
//!   autocommit, on connections that set `tollgate.platform=on` at startup so that row-level
//!   security lets it through without a statement of its own; one connection per task, as pgbench
//!   does. Synchronous commit as the cluster is configured.
//! - SQLite (no data-modifying CTEs): `BEGIN IMMEDIATE; UPDATE ..; INSERT ..; COMMIT` on one
//!   connection that every task shares (SQLite has one writer), with the server's settings (WAL,
//!   synchronous=NORMAL, foreign keys).
//!
//! `per_txn` recordings share a transaction (10 in the "group commit" reference row).

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Result, bail};
use chrono::{DateTime, NaiveDate, Utc};
use sea_orm::sqlx;
use uuid::Uuid;

/// The update of the counter with its cap check. `$4` is the cap (no refusal: far above what the
/// run records, so every recording inserts its event; a refused one is an error).
const PG_ONE: &str = "WITH c AS (\
       UPDATE usage_counters SET used = used + 10000, updated_at = $3 \
       WHERE organization_id = $1 AND period_start = $2 AND metric_code = 'bookings' \
         AND used - credits <= $4 - 10000 RETURNING organization_id) \
     INSERT INTO usage_events (organization_id, id, metric_code, kind, quantity, period_start, \
       idempotency_key, actor, overage, charge, occurred_at, recorded_at) \
     SELECT organization_id, $5, 'bookings', 'USAGE', 10000, $2, NULL, 'bench-floor', false, 0, $3, $3 FROM c";

const LITE_UPDATE: &str = "UPDATE usage_counters SET used = used + 10000, updated_at = ?3 \
     WHERE organization_id = ?1 AND period_start = ?2 AND metric_code = 'bookings' \
       AND used - credits <= ?4 - 10000";

const LITE_INSERT: &str = "INSERT INTO usage_events (organization_id, id, metric_code, kind, quantity, period_start, \
       idempotency_key, actor, overage, charge, occurred_at, recorded_at) \
     VALUES (?1, ?2, 'bookings', 'USAGE', 10000, ?3, NULL, 'bench-floor', false, 0, ?4, ?4)";

const CAP: i64 = i64::MAX / 4;

pub enum Floor {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

impl Floor {
    /// Opens `connections` connections to `url` (SQLite: always one).
    pub async fn open(url: &str, connections: u32) -> Result<Floor> {
        if url.starts_with("sqlite:") {
            let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url)?
                .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true);
            let pool = sqlx::pool::PoolOptions::<sqlx::Sqlite>::new()
                .max_connections(1)
                .min_connections(1)
                .connect_with(opts)
                .await?;
            Ok(Floor::Sqlite(pool))
        } else {
            let opts = sqlx::postgres::PgConnectOptions::from_str(url)?
                .options([("tollgate.platform", "on")])
                .application_name("tollgate-bench-floor");
            let pool = sqlx::pool::PoolOptions::<sqlx::Postgres>::new()
                .max_connections(connections)
                .min_connections(0)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await?;
            // Open every connection before the clock starts.
            let mut held = Vec::new();
            for _ in 0..connections {
                held.push(pool.acquire().await?);
            }
            drop(held);
            Ok(Floor::Postgres(pool))
        }
    }

    /// How the engine commits, for the rows' notes.
    pub async fn durability(&self) -> Result<String> {
        Ok(match self {
            Floor::Postgres(pool) => {
                let (sync,): (String,) = sqlx::query_as("SHOW synchronous_commit")
                    .fetch_one(pool)
                    .await?;
                let (fsync,): (String,) = sqlx::query_as("SHOW fsync").fetch_one(pool).await?;
                format!("synchronous_commit={sync}, fsync={fsync}")
            }
            Floor::Sqlite(pool) => {
                let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
                    .fetch_one(pool)
                    .await?;
                let (sync,): (i64,) = sqlx::query_as("PRAGMA synchronous").fetch_one(pool).await?;
                let sync = match sync {
                    0 => "OFF",
                    1 => "NORMAL",
                    2 => "FULL",
                    _ => "EXTRA",
                };
                format!("journal_mode={mode}, synchronous={sync} (the server's)")
            }
        })
    }

    /// Makes sure each organization has a bookings counter in the period (the floor updates it).
    pub async fn prepare(&self, orgs: &[Uuid], period: NaiveDate) -> Result<()> {
        let now = Utc::now();
        for org in orgs {
            match self {
                Floor::Postgres(pool) => {
                    sqlx::query(
                        "INSERT INTO usage_counters (organization_id, period_start, metric_code, used, credits, updated_at) \
                         VALUES ($1, $2, 'bookings', 0, 0, $3) \
                         ON CONFLICT (organization_id, period_start, metric_code) DO NOTHING",
                    )
                    .bind(org)
                    .bind(period)
                    .bind(now)
                    .execute(pool)
                    .await?;
                }
                Floor::Sqlite(pool) => {
                    sqlx::query(
                        "INSERT INTO usage_counters (organization_id, period_start, metric_code, used, credits, updated_at) \
                         VALUES (?1, ?2, 'bookings', 0, 0, ?3) \
                         ON CONFLICT (organization_id, period_start, metric_code) DO NOTHING",
                    )
                    .bind(org)
                    .bind(period)
                    .bind(now)
                    .execute(pool)
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// `per_txn` minimal recordings of one booking for `org` in one transaction (autocommit when 1
    /// on Postgres).
    pub async fn record(&self, org: Uuid, period: NaiveDate, per_txn: usize) -> Result<()> {
        let now = Utc::now();
        match self {
            Floor::Postgres(pool) => {
                if per_txn == 1 {
                    return pg_one(&mut *pool.acquire().await?, org, period, now).await;
                }
                let mut txn = pool.begin().await?;
                for _ in 0..per_txn {
                    pg_one(&mut txn, org, period, now).await?;
                }
                txn.commit().await?;
                Ok(())
            }
            Floor::Sqlite(pool) => {
                let mut conn = pool.acquire().await?;
                sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
                let done = async {
                    for _ in 0..per_txn {
                        lite_one(&mut conn, org, period, now).await?;
                    }
                    anyhow::Ok(())
                }
                .await;
                match done {
                    Ok(()) => {
                        sqlx::query("COMMIT").execute(&mut *conn).await?;
                        Ok(())
                    }
                    Err(e) => {
                        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                        Err(e)
                    }
                }
            }
        }
    }
}

async fn pg_one(
    conn: &mut sqlx::PgConnection,
    org: Uuid,
    period: NaiveDate,
    now: DateTime<Utc>,
) -> Result<()> {
    let done = sqlx::query(PG_ONE)
        .bind(org)
        .bind(period)
        .bind(now)
        .bind(CAP)
        .bind(Uuid::now_v7())
        .execute(conn)
        .await?;
    if done.rows_affected() != 1 {
        bail!(
            "the floor's recording inserted {} events",
            done.rows_affected()
        );
    }
    Ok(())
}

async fn lite_one(
    conn: &mut sqlx::SqliteConnection,
    org: Uuid,
    period: NaiveDate,
    now: DateTime<Utc>,
) -> Result<()> {
    let updated = sqlx::query(LITE_UPDATE)
        .bind(org)
        .bind(period)
        .bind(now)
        .bind(CAP)
        .execute(&mut *conn)
        .await?;
    if updated.rows_affected() != 1 {
        bail!(
            "the floor's update changed {} counters",
            updated.rows_affected()
        );
    }
    sqlx::query(LITE_INSERT)
        .bind(org)
        .bind(Uuid::now_v7())
        .bind(period)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

//! The store: every SQL statement of the service. Functions over tenant data take the caller's
//! `Scope` as a parameter, so a query that forgets it does not compile; the scope becomes a
//! `organization_id` filter in the statement itself.

pub mod catalog;
pub mod connect;
pub mod db;
pub mod group;
pub mod ledger;
pub mod memberships;
pub mod orgs;
pub mod overage;
pub mod payments;
pub mod rebuild;
pub mod recording;
pub mod stripe;
pub mod team;
pub mod utilization;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use migration::MigratorTrait;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, QueryResult,
    Statement, Value,
};

use crate::domain::{OrganizationId, Scope};

/// Prepared statements kept by each Postgres connection (`connect_counted`).
const STATEMENT_CACHE: usize = 400;

/// Counts SQL statements, so tests can prove what a request costs (a page of organizations with
/// DataLoaders, a recording). Statements of background work (`background`) are counted apart.
#[derive(Debug, Default)]
pub struct StatementCounter {
    requests: AtomicU64,
    background: AtomicU64,
}

impl StatementCounter {
    /// Statements run for requests (and the recordings they queue), not by background work.
    pub fn get(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Statements of background work (the platform team's refresh, the index's materialization,
    /// the periodic recompute, the Stripe outbox).
    pub fn background(&self) -> u64 {
        self.background.load(Ordering::Relaxed)
    }
}

tokio::task_local! {
    static BACKGROUND: ();
}

/// Runs `work` as background work: its statements are counted apart from requests'.
pub async fn background<F: std::future::Future>(work: F) -> F::Output {
    BACKGROUND.scope((), work).await
}

/// Opens the pool, with SQLite set up for concurrent use (WAL, a busy timeout, foreign keys).
pub async fn connect(
    url: &str,
    max_connections: u32,
    statement_timeout: Duration,
) -> Result<(DatabaseConnection, Arc<StatementCounter>), DbErr> {
    let counter = Arc::new(StatementCounter::default());
    let db = connect_counted(
        url,
        max_connections,
        statement_timeout,
        counter.clone(),
        true,
    )
    .await?;
    Ok((db, counter))
}

/// SQLite's writer connection, with the checkpointer its WAL needs (`connect_writer`).
pub struct Writer {
    pub db: DatabaseConnection,
    pub checkpointer: Checkpointer,
}

/// SQLite: a pool of one connection for the writers (their turn is one at a time anyway), so the
/// connection that writes keeps its page cache from one transaction to the next instead of
/// finding it outdated by another connection's write. Its commits never checkpoint the WAL: a
/// checkpoint (copying the WAL's pages into the database file, and its fsync) is a third of what the
/// writer's thread would otherwise do under a steady load, and every writer waits for that thread.
/// Its `Checkpointer` does it on a connection of its own, and comes with it, so that no writer runs
/// without one; `writers_turn` is the `Db`'s write gate, which it holds now and then (`Checkpointer`).
/// None on Postgres.
pub async fn connect_writer(
    url: &str,
    statement_timeout: Duration,
    counter: Arc<StatementCounter>,
    writers_turn: Arc<tokio::sync::Mutex<()>>,
) -> Result<Option<Writer>, DbErr> {
    if !url.starts_with("sqlite:") {
        return Ok(None);
    }
    let db = connect_counted(url, 1, statement_timeout, counter, false).await?;
    let checkpointer =
        Checkpointer::start(url, statement_timeout, writers_turn, RESTART_EVERY).await?;
    Ok(Some(Writer { db, checkpointer }))
}

/// SQLite: checkpoints the WAL in the background, on a connection of its own, for the writer whose
/// commits do not (`connect_writer`). Ends when dropped.
///
/// SQLite writes the WAL from its start again only at a commit that finds every frame already
/// copied into the database file. A background checkpoint under a steady load never finds that: a
/// writer commits again while it copies. So the WAL file grew for as long as the load lasted
/// (3 GB in a bench run), and every commit appended to it, which costs the file system a new block
/// each time (BENCHMARKS.md, fourteenth pass). So once a `RESTART_EVERY`, the checkpoint takes the
/// writers' turn (the `Db`'s write gate) and holds every write of the process back while it copies
/// the rest; the next commit then starts the WAL over. A turn that does not come within the
/// statement timeout, or a reader still on an older snapshot, only leaves that for the next time.
pub struct Checkpointer(tokio::task::AbortHandle);

/// How often the WAL is checkpointed. A checkpoint copies what was committed since the previous one
/// (`PASSIVE`: it never waits for a reader or the writer); idle, it costs one statement.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// How often a checkpoint holds the writes back, so that the next commit starts the WAL over.
const RESTART_EVERY: Duration = Duration::from_secs(1);

impl Checkpointer {
    async fn start(
        url: &str,
        statement_timeout: Duration,
        writers_turn: Arc<tokio::sync::Mutex<()>>,
        restart_every: Duration,
    ) -> Result<Self, DbErr> {
        let db = connect_counted(
            url,
            1,
            statement_timeout,
            Arc::new(StatementCounter::default()),
            true,
        )
        .await?;
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut restarted = std::time::Instant::now();
            // A failure is logged when it starts and when it ends, not every 100 ms.
            let mut failing = false;
            loop {
                tick.tick().await;
                let _turn = if restarted.elapsed() >= restart_every {
                    restarted = std::time::Instant::now();
                    tokio::time::timeout(statement_timeout, writers_turn.lock())
                        .await
                        .ok()
                } else {
                    None
                };
                match db
                    .execute_unprepared("PRAGMA wal_checkpoint(PASSIVE)")
                    .await
                {
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "checkpointing the WAL failed; retrying");
                    }
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("checkpointing the WAL works again");
                    }
                    _ => {}
                }
            }
        });
        Ok(Checkpointer(task.abort_handle()))
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn connect_counted(
    url: &str,
    max_connections: u32,
    statement_timeout: Duration,
    counter: Arc<StatementCounter>,
    checkpoints: bool,
) -> Result<DatabaseConnection, DbErr> {
    let is_sqlite = url.starts_with("sqlite:");
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if is_sqlite {
        // An embedded database's connection cannot have died while idle: no ping (a round trip to
        // the connection's thread) before each use.
        opts.test_before_acquire(false);
        // SQLite has no statement timeout; the same setting bounds the wait for the write lock.
        opts.map_sqlx_sqlite_opts(move |o| {
            o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(statement_timeout)
                .foreign_keys(true)
                .pragma("wal_autocheckpoint", if checkpoints { "1000" } else { "0" })
        });
    } else {
        let ms = statement_timeout.as_millis().to_string();
        opts.map_sqlx_postgres_opts(move |o| {
            // A transaction left idle (its client gone quiet mid-way) is ended by the server
            // rather than holding its locks and connection.
            o.options([
                ("statement_timeout", ms.as_str()),
                ("idle_in_transaction_session_timeout", ms.as_str()),
            ])
            .application_name("tollgate")
            // The statements a connection keeps prepared (sqlx's default is 100): every read and
            // write of the service, with each multi-row statement in its padded sizes
            // (`pad_rows`), without pushing one another out.
            .statement_cache_capacity(STATEMENT_CACHE)
        });
    }
    let mut db = Database::connect(opts).await?;
    let c = counter;
    db.set_metric_callback(move |info| {
        if BACKGROUND.try_with(|_| ()).is_ok() {
            c.background.fetch_add(1, Ordering::Relaxed);
        } else {
            c.requests.fetch_add(1, Ordering::Relaxed);
        }
        tracing::trace!(target: "tollgate::sql", sql = %info.statement.sql, elapsed_us = info.elapsed.as_micros() as u64, failed = info.failed);
    });
    Ok(db)
}

/// On Postgres, whether the connected role bypasses row-level security (a superuser, or BYPASSRLS):
/// then the policies are no second wall, and the server says so at boot.
pub async fn bypasses_rls(db: &DatabaseConnection) -> Result<bool, DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(false);
    }
    let row = query_one(
        db,
        "SELECT rolsuper OR rolbypassrls AS bypass FROM pg_roles WHERE rolname = current_user",
        vec![],
    )
    .await?;
    Ok(row
        .map(|r| r.try_get::<bool>("", "bypass"))
        .transpose()?
        .unwrap_or(false))
}

/// Applies pending migrations (schema and default data).
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    migration::Migrator::up(db, None).await
}

/// Builds a statement from SQL written with `$1`-style placeholders, for either engine: SQLite takes
/// them as positional `?` (`positional`).
pub fn stmt(backend: DbBackend, sql: &str, values: Vec<Value>) -> Statement {
    if backend == DbBackend::Sqlite {
        let (sql, values) = positional(sql, values);
        return Statement::from_sql_and_values(backend, sql, values);
    }
    Statement::from_sql_and_values(backend, sql.to_owned(), values)
}

/// SQL numbered for Postgres (`$n`, a number used as often as needed), rewritten for SQLite with
/// positional parameters (`?`) and the values in the order they appear:
/// - SQLite looks a numbered parameter's name up by a linear scan, and sqlx asks the name of every
///   parameter, so binding a multi-row statement of n numbered parameters took time in n² (28% of
///   the writer's time under recordUsageBatch);
/// - a script of several statements binds each from where the previous one stopped, so numbers
///   shared across statements would bind the wrong values.
///
/// The SQL the store writes holds no `$` but its parameters (no `$` in a literal).
fn positional(sql: &str, values: Vec<Value>) -> (String, Vec<Value>) {
    if !sql.contains('$') {
        return (sql.to_owned(), values);
    }
    let mut out = String::with_capacity(sql.len());
    let mut bound = Vec::with_capacity(values.len());
    let mut rest = sql;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let digits = rest[i + 1..].bytes().take_while(u8::is_ascii_digit).count();
        let n: usize = rest[i + 1..i + 1 + digits].parse().unwrap_or(0);
        out.push('?');
        bound.push(
            values
                .get(n.wrapping_sub(1))
                .cloned()
                .unwrap_or(Value::Int(None)),
        );
        rest = &rest[i + 1 + digits..];
    }
    out.push_str(rest);
    (out, bound)
}

pub async fn query_all<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<Value>,
) -> Result<Vec<QueryResult>, DbErr> {
    db.query_all_raw(stmt(db.get_database_backend(), sql, values))
        .await
}

pub async fn query_one<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<Value>,
) -> Result<Option<QueryResult>, DbErr> {
    db.query_one_raw(stmt(db.get_database_backend(), sql, values))
        .await
}

pub async fn execute<C: ConnectionTrait>(
    db: &C,
    sql: &str,
    values: Vec<Value>,
) -> Result<u64, DbErr> {
    db.execute_raw(stmt(db.get_database_backend(), sql, values))
        .await
        .map(|r| r.rows_affected())
}

/// The organization ids a scope lets a query touch, intersected with the ids asked for.
pub fn scoped_ids(scope: Scope, ids: &[OrganizationId]) -> Vec<OrganizationId> {
    ids.iter().copied().filter(|id| scope.allows(*id)).collect()
}

/// A case-insensitive substring match of `col` against `search`, LIKE's own characters taken
/// literally (both engines).
pub fn contains_ci(
    col: impl sea_orm::sea_query::IntoColumnRef,
    search: &str,
) -> sea_orm::sea_query::SimpleExpr {
    use sea_orm::sea_query::{Expr, ExprTrait, Func, LikeExpr};
    let escaped = search
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    Expr::expr(Func::lower(Expr::col(col))).like(LikeExpr::new(format!("%{escaped}%")).escape('\\'))
}

/// `$n, $n+1, ...` placeholders for a list bound from position `start`.
pub fn placeholders(start: usize, n: usize) -> String {
    (start..start + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Appends one row to a multi-row `VALUES` list: its placeholders, numbered after `values`, to
/// `rows`, and its values to `values`.
pub fn push_row<const N: usize>(rows: &mut Vec<String>, values: &mut Vec<Value>, row: [Value; N]) {
    rows.push(format!("({})", placeholders(values.len() + 1, N)));
    values.extend(row);
}

/// The number of rows a multi-row list of `n` rows is padded to on Postgres (`pad_rows`): `n` up
/// to 3, then the next of 4, 6, 8, 12, 16, 24, ... (two sizes for each doubling, so at most a third
/// of a list is padding).
pub fn padded_len(n: usize) -> usize {
    if n <= 3 {
        return n;
    }
    let next = n.next_power_of_two();
    let between = next / 4 * 3;
    if n <= between { between } else { next }
}

/// The longest list `pad_rows` pads: a wave of single recordings. Longer lists (a batch's) spend
/// their time executing, not planning, and padding them cost the batch about a sixth of its
/// throughput (BENCHMARKS.md, ninth pass).
const PAD_MAX: usize = 64;

/// Pads a multi-row `VALUES` list of at most `PAD_MAX` rows on Postgres to `padded_len` rows, and
/// says whether it did. Postgres parses and plans a statement once for each text on each connection
/// (sqlx keeps it prepared), so a statement whose row count follows the load would be planned again
/// for every size on every connection, and its sizes would crowd the connection's cache of prepared
/// statements.
///
/// The rows added copy the first row's values, with column `null_column` (0-based; a key that is
/// never NULL, such as the organization's id) set to NULL: they match no row of a join or an
/// `UPDATE .. FROM`, and an insert filters them out (`insert_source`). The list's rows are the last
/// `rows.len() * width` of `values` (`push_row`; values before them are the statement's own), each
/// `width` wide. SQLite, whose statements are not a round trip to prepare, keeps the list as it is.
pub fn pad_rows(
    backend: DbBackend,
    rows: &mut Vec<String>,
    values: &mut Vec<Value>,
    width: usize,
    null_column: usize,
) -> bool {
    if backend != DbBackend::Postgres || rows.is_empty() || rows.len() > PAD_MAX {
        return false;
    }
    let first = values.len().checked_sub(rows.len() * width);
    let Some(mut template) = first
        .and_then(|f| values.get(f..f + width))
        .map(<[Value]>::to_vec)
    else {
        return false;
    };
    let Some(key) = template.get_mut(null_column) else {
        return false;
    };
    *key = key.as_null();
    for _ in rows.len()..padded_len(rows.len()) {
        rows.push(format!("({})", placeholders(values.len() + 1, width)));
        values.extend(template.iter().cloned());
    }
    true
}

/// What an `INSERT` takes its rows from: the list itself, or, when `pad_rows` padded it, the list
/// with the padding (NULL in its first column) filtered out.
pub fn insert_source(padded: bool, rows: &[String]) -> String {
    if padded {
        format!(
            "SELECT * FROM (VALUES {}) AS v WHERE v.column1 IS NOT NULL",
            rows.join(", ")
        )
    } else {
        format!("VALUES {}", rows.join(", "))
    }
}

/// Queues a notification on a Postgres channel; it is delivered when (and only if) the transaction
/// commits. (A wave queues its several with its writes: `group::write_wave`.)
pub async fn notify<C: ConnectionTrait>(db: &C, channel: &str, payload: &str) -> Result<(), DbErr> {
    let values: Vec<Value> = vec![channel.into(), payload.into()];
    query_one(db, "SELECT pg_notify($1, $2)", values)
        .await
        .map(|_| ())
}

pub async fn ping<C: ConnectionTrait>(db: &C) -> Result<(), DbErr> {
    query_one(db, "SELECT 1", vec![]).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_pad_to_two_sizes_a_doubling() {
        let sizes: Vec<usize> = (1..=33).map(padded_len).collect();
        assert_eq!(
            sizes,
            [
                1, 2, 3, 4, 6, 6, 8, 8, 12, 12, 12, 12, 16, 16, 16, 16, 24, 24, 24, 24, 24, 24, 24,
                24, 32, 32, 32, 32, 32, 32, 32, 32, 48
            ]
        );
        for n in 1..5000 {
            let p = padded_len(n);
            assert!(p >= n && (p - n) * 3 <= p, "{n} pads to {p}");
        }
    }

    #[test]
    fn padding_rows_copy_the_first_with_its_key_null_on_postgres_only() {
        let build = || {
            let mut rows = Vec::new();
            let mut values: Vec<Value> = vec![0i64.into()];
            for i in 1..=5i64 {
                push_row(
                    &mut rows,
                    &mut values,
                    [uuid::Uuid::from_u128(i as u128).into(), i.into()],
                );
            }
            (rows, values)
        };
        let (mut rows, mut values) = build();
        assert!(!pad_rows(DbBackend::Sqlite, &mut rows, &mut values, 2, 0));
        assert_eq!((rows.len(), values.len()), (5, 11));

        assert!(pad_rows(DbBackend::Postgres, &mut rows, &mut values, 2, 0));
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[5], "($12, $13)");
        assert_eq!(values[11], Value::Uuid(None));
        assert_eq!(values[12], Value::from(1i64));
        assert_eq!(
            insert_source(true, &rows[..1]),
            "SELECT * FROM (VALUES ($2, $3)) AS v WHERE v.column1 IS NOT NULL"
        );
        assert_eq!(insert_source(false, &rows[..1]), "VALUES ($2, $3)");

        // A batch's long lists stay as they are.
        let mut rows = vec!["($1)".to_owned(); PAD_MAX + 1];
        let mut values: Vec<Value> = vec![1i64.into(); PAD_MAX + 1];
        assert!(!pad_rows(DbBackend::Postgres, &mut rows, &mut values, 1, 0));
        assert_eq!(rows.len(), PAD_MAX + 1);
    }

    #[test]
    fn sqlite_binds_each_parameter_where_it_appears() {
        let values: Vec<Value> = vec![1i64.into(), 2i64.into(), 3i64.into()];
        let (sql, bound) = positional(
            "SELECT $1, $3; UPDATE t SET a = $3 WHERE b = $12 AND c = $2",
            values.clone(),
        );
        assert_eq!(sql, "SELECT ?, ?; UPDATE t SET a = ? WHERE b = ? AND c = ?");
        assert_eq!(
            bound,
            vec![
                Value::from(1i64),
                Value::from(3i64),
                Value::from(3i64),
                Value::Int(None),
                Value::from(2i64)
            ]
        );
        // Without numbered parameters, nothing moves.
        let (sql, bound) = positional("SELECT 1", values);
        assert_eq!((sql.as_str(), bound.len()), ("SELECT 1", 3));
    }

    /// The writer's commits leave the WAL's pages where they are (the database file does not grow
    /// past 1,000 pages of WAL, where SQLite would checkpoint by default); the checkpointer copies
    /// them into the database file soon after.
    #[tokio::test]
    async fn the_writer_leaves_checkpoints_to_the_checkpointer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("wal.db");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let timeout = Duration::from_secs(5);
        // The writer's connection alone first, then its checkpointer (`connect_writer` starts both).
        let counter = Arc::new(StatementCounter::default());
        let writer = connect_counted(&url, 1, timeout, counter, false)
            .await
            .expect("writer");
        writer
            .execute_unprepared("CREATE TABLE t (b BLOB)")
            .await
            .expect("table");
        let size = || std::fs::metadata(&file).map_or(0, |m| m.len());
        let before = size();
        // About 2,000 pages, in 20 commits.
        for _ in 0..20 {
            writer
                .execute_unprepared(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) \
                     INSERT INTO t SELECT randomblob(4000) FROM n",
                )
                .await
                .expect("insert");
        }
        assert!(
            size() < before + 1_000_000,
            "the writer checkpointed: {before} -> {} bytes",
            size()
        );
        let _checkpointer = Checkpointer::start(&url, timeout, Arc::default(), RESTART_EVERY)
            .await
            .expect("checkpointer");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while size() < before + 8_000_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing was checkpointed: {} bytes",
                size()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Under a steady load the WAL starts over from its beginning when the checkpointer holds the
    /// writers' turn for a checkpoint now and then, instead of growing for as long as the load
    /// lasts: commits of about 100 pages each, back to back for 1.5 s with a restart every 200 ms,
    /// leave a WAL of less than a third of what they wrote.
    #[tokio::test]
    async fn the_wal_starts_over_under_a_steady_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("wal.db");
        let wal = dir.path().join("wal.db-wal");
        let url = format!("sqlite://{}?mode=rwc", file.display());
        let timeout = Duration::from_secs(5);
        let writer = connect_counted(&url, 1, timeout, Arc::default(), false)
            .await
            .expect("writer");
        writer
            .execute_unprepared("CREATE TABLE t (i INTEGER PRIMARY KEY, b BLOB)")
            .await
            .expect("table");
        let turn = Arc::new(tokio::sync::Mutex::new(()));
        let _checkpointer =
            Checkpointer::start(&url, timeout, turn.clone(), Duration::from_millis(200))
                .await
                .expect("checkpointer");
        let commit = 100 * 4_096;
        let (mut written, mut largest) = (0, 0);
        let end = std::time::Instant::now() + Duration::from_millis(1_500);
        for round in 0.. {
            if std::time::Instant::now() > end {
                break;
            }
            // Each commit in the writers' turn, as `Db::begin_write` takes it; the same 100 rows
            // rewritten, so each writes about 100 pages of WAL.
            let _turn = turn.lock().await;
            writer
                .execute_unprepared(&format!(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100) \
                     INSERT OR REPLACE INTO t SELECT i, randomblob(3000 + {round} % 7) FROM n"
                ))
                .await
                .expect("write");
            written += commit;
            largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
        }
        assert!(
            largest * 3 < written,
            "the WAL grew to {largest} bytes for {written} written"
        );
    }

    /// A recording's event is written to no index it does not need: the ledger has no index on
    /// recording time, and the one on references holds only events that carry one, yet can still
    /// serve a lookup by reference.
    #[tokio::test]
    async fn the_ledger_indexes_only_what_is_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("ix.db").display());
        let db = Database::connect(&url).await.expect("connect");
        migrate(&db).await.expect("migrate");
        let indexes = query_all(
            &db,
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'usage_events' \
             AND sql IS NOT NULL",
            vec![],
        )
        .await
        .expect("indexes");
        let sql_of = |name: &str| {
            indexes
                .iter()
                .find(|r| r.try_get::<String>("", "name").is_ok_and(|n| n == name))
                .map(|r| r.try_get::<String>("", "sql").expect("sql"))
        };
        assert_eq!(sql_of("idx_usage_events_recorded"), None);
        let reference = sql_of("idx_usage_events_reference").expect("the reference index");
        assert!(
            reference.ends_with("WHERE reference IS NOT NULL"),
            "{reference}"
        );
        // SQLite's plan of a query by organization and reference.
        let plan_of = |sql: String| {
            let db = &db;
            async move {
                query_all(
                    db,
                    &format!("EXPLAIN QUERY PLAN {sql}"),
                    vec![uuid::Uuid::nil().into(), "booking-1".into()],
                )
                .await
                .expect("plan")
                .iter()
                .map(|r| r.try_get::<String>("", "detail").expect("detail"))
                .collect::<Vec<String>>()
            }
        };
        // `reference = ?` implies the partial index's `reference IS NOT NULL`.
        let plan = plan_of(
            "SELECT id FROM usage_events WHERE organization_id = $1 AND reference = $2".to_owned(),
        )
        .await;
        assert!(
            plan.iter()
                .any(|d| d.contains("USING INDEX idx_usage_events_reference")),
            "{plan:?}"
        );
        // reverseUsage's lookup reads the events with the reference and, for each, whether a
        // reversal points at it: two index searches, not the organization's whole ledger.
        let plan = plan_of(ledger::UNREVERSED_BY_REFERENCE.to_owned()).await;
        for (table, index) in [
            ("e", "idx_usage_events_reference"),
            ("r", "idx_usage_events_reversal"),
        ] {
            assert!(
                plan.iter()
                    .any(|d| d.starts_with(&format!("SEARCH {table} USING"))
                        && d.contains(&format!("INDEX {index} "))),
                "{plan:?}"
            );
        }
    }
}

//! `Db`: the pool behind a caller's scope. On Postgres, row-level security is the second wall behind
//! the scope parameters of the store: every transaction first sets the caller's organization (or the
//! platform role) with `set_config(..., true)`, and the policies of the tenant tables hide every other
//! organization's rows, even from a statement that forgot its filter.
//!
//! - A request's handle (`Db::scoped`) runs its reads in one lazily opened transaction that carries
//!   the scope, released when the request ends (or before a write begins, so a request never holds
//!   two connections).
//! - `begin_write` opens a transaction that carries the scope (on SQLite: `BEGIN IMMEDIATE`).
//! - The process's base handle (platform scope, used by background work) runs each statement outside
//!   a transaction in a short transaction of its own.
//!
//! On SQLite (one process, no roles) the scope parameters are the wall, and statements go straight to
//! the pool.

use std::sync::Arc;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, ExecResult,
    QueryResult, Statement, TransactionTrait,
};
use tokio::sync::Mutex;

use crate::domain::Scope;

#[derive(Clone)]
pub struct Db {
    pool: DatabaseConnection,
    /// Where transactions that write begin: the pool, or on SQLite a pool of its own connection
    /// (`store::connect_writer`).
    writer: DatabaseConnection,
    scope: Scope,
    rls: bool,
    /// SQLite: one writer at a time per process, queued here (in order, without sleeping) rather than
    /// in SQLite's busy handler, which sleeps with back-off.
    write_gate: Arc<Mutex<()>>,
    /// The longest a writer waits for its turn (SQLite) before giving up with an error: a write
    /// never waits without bound behind another.
    turn_timeout: std::time::Duration,
    /// A request's lazily opened read transaction; None for the base handle.
    read: Option<Arc<Mutex<Option<Arc<DatabaseTransaction>>>>>,
}

/// The error of a writer that waited longer than the statement timeout for its turn.
pub const WRITER_TURN_TIMEOUT: &str = "timed out waiting for the database writer's turn";

/// Sets the caller's scope for the rest of the transaction (Postgres).
pub async fn set_scope<C: ConnectionTrait>(txn: &C, scope: Scope) -> Result<(), DbErr> {
    let (org, platform) = match scope {
        Scope::Platform => (String::new(), "on"),
        Scope::Tenant(org) => (org.0.to_string(), "off"),
    };
    super::query_one(
        txn,
        "SELECT set_config('tollgate.org_id', $1, true), set_config('tollgate.platform', $2, true)",
        vec![org.into(), platform.into()],
    )
    .await
    .map(|_| ())
}

/// A transaction that writes (and, on SQLite, the process's writer turn, given back when it ends).
pub struct WriteTxn {
    txn: DatabaseTransaction,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTxn {
    pub async fn commit(self) -> Result<(), DbErr> {
        self.txn.commit().await
    }

    pub async fn rollback(self) -> Result<(), DbErr> {
        self.txn.rollback().await
    }
}

impl std::ops::Deref for WriteTxn {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

enum Route {
    Pool,
    Read(Arc<DatabaseTransaction>),
    OneShot,
}

impl Db {
    /// The base handle: platform scope, row-level security applied on Postgres.
    pub fn new(pool: DatabaseConnection, turn_timeout: std::time::Duration) -> Self {
        let rls = pool.get_database_backend() == DbBackend::Postgres;
        Db {
            writer: pool.clone(),
            pool,
            scope: Scope::Platform,
            rls,
            write_gate: Arc::new(Mutex::new(())),
            turn_timeout,
            read: None,
        }
    }

    /// A handle for one caller (a request, or one round of a subscription).
    pub fn scoped(&self, scope: Scope) -> Self {
        Db {
            pool: self.pool.clone(),
            writer: self.writer.clone(),
            scope,
            rls: self.rls,
            write_gate: self.write_gate.clone(),
            turn_timeout: self.turn_timeout,
            read: Some(Arc::new(Mutex::new(None))),
        }
    }

    /// Postgres: row-level security, and alerts across replicas by NOTIFY.
    pub fn is_postgres(&self) -> bool {
        self.rls
    }

    /// The pool itself, for tables outside tenant scope (the platform team, the catalogue) and probes.
    pub fn pool(&self) -> &DatabaseConnection {
        &self.pool
    }

    /// Ends the handle's read transaction, if one is open (it only read, so nothing is lost either
    /// way; a commit returns the connection at once).
    pub async fn release(&self) {
        let Some(read) = &self.read else { return };
        let txn = read.lock().await.take();
        if let Some(txn) = txn
            && let Ok(txn) = Arc::try_unwrap(txn)
        {
            let _ = txn.commit().await;
        }
    }

    /// Begins a transaction that writes, carrying the scope: on SQLite `BEGIN IMMEDIATE`, so it takes
    /// the write lock at once and never fails later on a lock upgrade.
    pub async fn begin_write(&self) -> Result<WriteTxn, DbErr> {
        self.release().await;
        let gate = if self.rls {
            None
        } else {
            let turn = self.write_gate.clone().lock_owned();
            Some(
                tokio::time::timeout(self.turn_timeout, turn)
                    .await
                    .map_err(|_| DbErr::Custom(WRITER_TURN_TIMEOUT.to_owned()))?,
            )
        };
        let opts = sea_orm::TransactionOptions {
            sqlite_transaction_mode: Some(sea_orm::SqliteTransactionMode::Immediate),
            ..Default::default()
        };
        let txn = self.writer.begin_with_options(opts).await?;
        if self.rls {
            set_scope(&txn, self.scope).await?;
        }
        Ok(WriteTxn { txn, _gate: gate })
    }

    /// The same handle with its transactions that write beginning on `writer`.
    pub fn with_writer(mut self, writer: DatabaseConnection) -> Self {
        self.writer = writer;
        self
    }

    /// The writers' turn (SQLite): held by each transaction that writes, and now and then by the
    /// WAL's checkpointer to hold them all back (`store::Checkpointer`).
    pub fn writers_turn(&self) -> Arc<Mutex<()>> {
        self.write_gate.clone()
    }

    /// The process's base handle behind this one (platform scope, no read transaction).
    pub fn base(&self) -> Self {
        Db {
            pool: self.pool.clone(),
            writer: self.writer.clone(),
            scope: Scope::Platform,
            rls: self.rls,
            write_gate: self.write_gate.clone(),
            turn_timeout: self.turn_timeout,
            read: None,
        }
    }

    /// Begins a transaction that writes for several callers (group commit): each sets its own scope
    /// with its first statement (`store::recording::enter`), so none is set here.
    pub async fn begin_group(&self) -> Result<WriteTxn, DbErr> {
        if self.rls {
            let txn = self.pool.begin().await?;
            return Ok(WriteTxn { txn, _gate: None });
        }
        self.begin_write().await
    }

    async fn route(&self) -> Result<Route, DbErr> {
        if !self.rls {
            return Ok(Route::Pool);
        }
        let Some(read) = &self.read else {
            return Ok(Route::OneShot);
        };
        let mut slot = read.lock().await;
        if let Some(txn) = slot.as_ref() {
            return Ok(Route::Read(txn.clone()));
        }
        let txn = self.pool.begin().await?;
        set_scope(&txn, self.scope).await?;
        let txn = Arc::new(txn);
        *slot = Some(txn.clone());
        Ok(Route::Read(txn))
    }
}

/// Runs one statement where the handle's route says.
macro_rules! routed {
    ($self:ident, $method:ident, $arg:expr) => {
        match $self.route().await? {
            Route::Pool => $self.pool.$method($arg).await,
            Route::Read(txn) => txn.$method($arg).await,
            Route::OneShot => {
                let txn = $self.begin_write().await?;
                let out = txn.$method($arg).await?;
                txn.commit().await?;
                Ok(out)
            }
        }
    };
}

#[async_trait::async_trait]
impl ConnectionTrait for WriteTxn {
    fn get_database_backend(&self) -> DbBackend {
        self.txn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.txn.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.txn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.txn.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.txn.query_all_raw(stmt).await
    }

    fn support_returning(&self) -> bool {
        self.txn.support_returning()
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for Db {
    fn get_database_backend(&self) -> DbBackend {
        self.pool.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        routed!(self, execute_raw, stmt)
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        routed!(self, execute_unprepared, sql)
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        routed!(self, query_one_raw, stmt)
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        routed!(self, query_all_raw, stmt)
    }

    fn support_returning(&self) -> bool {
        self.pool.support_returning()
    }
}

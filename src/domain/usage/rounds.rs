//! Subscriptions' rounds, read together. A `usageUpdated` round reads its organization's summary
//! after each change. At a thousand changes a second over as many organizations, those reads were
//! most of the database's statements, each in a transaction of its own (begin, scope, read,
//! commit). Here a reader takes every round queued while the previous read ran (up to `MAX_ROUNDS`)
//! and reads all their organizations in one statement:
//! - on Postgres, in one transaction whose scope is those organizations (`tollgate.org_ids`, as the
//!   group writer's waves: `store::group::enter`);
//! - on SQLite, straight from the pool.
//!
//! Each round was checked against its own caller's scope before it was queued. Alone, a round costs
//! what it did (a scope and a read); under load, the cost per round falls as more share a read.

use std::sync::Arc;

use sea_orm::TransactionTrait;
use tokio::sync::{mpsc, oneshot};

use super::{Engine, UsageSummary};
use crate::domain::{OrganizationId, Period, Scope};
use crate::error::{AppError, AppResult};
use crate::store;

/// Rounds read in one statement at most.
const MAX_ROUNDS: usize = 256;

/// Rounds waiting for a read at most; past it, a round waits for room.
const QUEUE: usize = 4096;

pub(super) type Queue = mpsc::Sender<Ask>;

pub(super) struct Ask {
    org: OrganizationId,
    reply: oneshot::Sender<AppResult<Option<Arc<UsageSummary>>>>,
}

impl Engine {
    /// The organization's current-period summary for a subscription's round, read with the rounds
    /// queued meanwhile. None when the organization is gone or out of `scope`.
    pub async fn round_summary(
        &self,
        scope: Scope,
        org: OrganizationId,
    ) -> AppResult<Option<Arc<UsageSummary>>> {
        if !scope.allows(org) {
            return Ok(None);
        }
        let queue = self
            .rounds
            .get_or_init(|| async { self.start_rounds() })
            .await;
        let (reply, answer) = oneshot::channel();
        queue
            .send(Ask { org, reply })
            .await
            .map_err(|_| AppError::internal(anyhow::anyhow!("the rounds' reader stopped")))?;
        answer
            .await
            .map_err(|_| AppError::internal(anyhow::anyhow!("a rounds' read failed")))?
    }

    fn start_rounds(&self) -> Queue {
        let (tx, rx) = mpsc::channel(QUEUE);
        // The reader's engine has no queue of its own: when the last engine that has one is
        // dropped, the queue closes and the reader ends.
        let engine = Engine {
            db: self.db.base(),
            writers: Default::default(),
            rounds: Default::default(),
            ..self.clone()
        };
        tokio::spawn(engine.round_loop(rx));
        tx
    }

    async fn round_loop(self, mut rx: mpsc::Receiver<Ask>) {
        while let Some(first) = rx.recv().await {
            let mut asks = vec![first];
            while asks.len() < MAX_ROUNDS {
                match rx.try_recv() {
                    Ok(ask) => asks.push(ask),
                    Err(_) => break,
                }
            }
            // In a task of its own: a panic answers its rounds with an error (their reply channels
            // drop) and leaves the reader running.
            let _ = tokio::spawn(self.clone().read_rounds(asks)).await;
        }
    }

    async fn read_rounds(self, asks: Vec<Ask>) {
        let mut orgs: Vec<OrganizationId> = asks.iter().map(|a| a.org).collect();
        orgs.sort_unstable();
        orgs.dedup();
        metrics::histogram!("tollgate_subscription_round_reads").record(orgs.len() as f64);
        match self.read_summaries(&orgs, Period::current()).await {
            Ok(summaries) => {
                for ask in asks {
                    let summary = summaries.get(&ask.org).cloned();
                    let _ = ask.reply.send(Ok(summary));
                }
            }
            Err(e) => {
                tracing::error!(error = ?e, rounds = asks.len(), "subscription rounds' read failed");
                for ask in asks {
                    let _ = ask.reply.send(Err(AppError::internal(anyhow::anyhow!(
                        "reading the organization's usage failed"
                    ))));
                }
            }
        }
    }

    /// The summaries of `orgs` (each already checked against its round's caller), in one statement.
    async fn read_summaries(
        &self,
        orgs: &[OrganizationId],
        period: Period,
    ) -> AppResult<std::collections::HashMap<OrganizationId, Arc<UsageSummary>>> {
        let read = if self.db.is_postgres() {
            let txn = self.db.pool().begin().await?;
            store::group::enter(&txn, orgs, false).await?;
            let read = self
                .summaries_of(&txn, Scope::Platform, orgs, period)
                .await?;
            txn.commit().await?;
            read
        } else {
            self.summaries_of(self.db.pool(), Scope::Platform, orgs, period)
                .await?
        };
        Ok(read.into_iter().map(|(id, s)| (id, Arc::new(s))).collect())
    }
}

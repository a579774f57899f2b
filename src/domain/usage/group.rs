//! Group commit: concurrent recordings share a transaction. A request queues its recordings (one, or
//! a batch) as one job and waits; a writer takes the first job in the queue and whatever else is
//! queued behind it (up to `MAX_GROUP` recordings), applies them in the global lock order
//! (`store::recording::lock_key`, so two writers never deadlock), commits once, then invalidates the
//! caches, publishes, and answers each job.
//!
//! A job is atomic, and one job never touches another: a HARD refusal or a replay writes nothing (it
//! is decided under the organization's lock before any write), and a job that fails (an unknown
//! organization, a key reused for another recording) is answered with its error while the rest of
//! the group is rolled back and applied again without it. A recording is answered only after its
//! commit, so an acknowledged recording survives kill -9.
//!
//! SQLite has one writer (writes are serialized by the engine anyway); Postgres one for every two
//! connections of the pool, each with its own group, so that one group's statements overlap
//! another's (on 2 vCPUs, 8 writers carried about 1.7 times what 1 did: BENCHMARKS.md).

use tokio::sync::{Mutex, mpsc, oneshot};

use super::recording::count_recording;
use super::*;
use crate::store::db::WriteTxn;

/// The most recordings one transaction carries.
const MAX_GROUP: usize = 512;
/// Jobs waiting for a writer, at most; a request beyond waits for room.
const QUEUE: usize = 4096;

pub(super) type Queue = mpsc::Sender<Job>;

pub(super) struct Job {
    viewer: Viewer,
    items: Vec<ParsedRecord>,
    reply: oneshot::Sender<AppResult<Vec<RecordOutcome>>>,
}

enum GroupError {
    /// A job failed: it alone is answered with the error; the group was rolled back.
    Job(usize, AppError),
    /// The group could not run or commit: every job is answered with the error.
    Group(AppError),
}

impl Engine {
    /// Queues recordings as one atomic job and waits for their commit.
    pub(super) async fn submit(
        &self,
        viewer: &Viewer,
        items: Vec<ParsedRecord>,
    ) -> AppResult<Vec<RecordOutcome>> {
        if items.is_empty() {
            return Ok(vec![]);
        }
        // The request's read transaction ends first: a request never holds two connections.
        self.db.release().await;
        let queue = self
            .writers
            .get_or_init(|| async { self.start_writers() })
            .await;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            viewer: viewer.clone(),
            items,
            reply,
        };
        queue
            .send(job)
            .await
            .map_err(|_| AppError::internal(anyhow::anyhow!("the writers stopped")))?;
        answer
            .await
            .map_err(|_| AppError::internal(anyhow::anyhow!("a writer failed")))?
    }

    fn start_writers(&self) -> Queue {
        let (tx, rx) = mpsc::channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let writers = if self.db.is_postgres() {
            self.writers_on_postgres
        } else {
            1
        };
        for _ in 0..writers {
            // The writer's engine has no queue of its own: when the last engine that has one is
            // dropped, the queue closes and the writers end.
            let engine = Engine {
                db: self.db.base(),
                writers: Default::default(),
                ..self.clone()
            };
            tokio::spawn(engine.write_loop(rx.clone()));
        }
        tx
    }

    async fn write_loop(self, rx: Arc<Mutex<mpsc::Receiver<Job>>>) {
        loop {
            let jobs = {
                let mut rx = rx.lock().await;
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut n = first.items.len();
                let mut jobs = vec![first];
                while n < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(job) => {
                            n += job.items.len();
                            jobs.push(job);
                        }
                        Err(_) => break,
                    }
                }
                jobs
            };
            // In a task of its own: a panic answers its jobs with an error (their reply channels
            // drop) and leaves the writer running.
            let _ = tokio::spawn(self.clone().apply_group(jobs)).await;
        }
    }

    async fn apply_group(self, mut jobs: Vec<Job>) {
        metrics::histogram!("tollgate_group_commit_recordings")
            .record(jobs.iter().map(|j| j.items.len()).sum::<usize>() as f64);
        while !jobs.is_empty() {
            match self.try_group(&jobs).await {
                Ok(outcomes) => {
                    for (job, outcomes) in jobs.into_iter().zip(outcomes) {
                        outcomes.iter().for_each(count_recording);
                        let _ = job.reply.send(Ok(outcomes));
                    }
                    return;
                }
                Err(GroupError::Job(i, error)) => {
                    let job = jobs.remove(i);
                    let _ = job.reply.send(Err(error));
                }
                Err(GroupError::Group(error)) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(copy_error(&error)));
                    }
                    return;
                }
            }
        }
    }

    /// Applies every job in one transaction and commits it.
    async fn try_group(&self, jobs: &[Job]) -> Result<Vec<Vec<RecordOutcome>>, GroupError> {
        // Organizations in the global lock order; within one, jobs in their order, and a job's
        // recordings by period and metric (each run of one metric in one period goes in multi-row
        // statements), keeping their order within a run.
        let mut order: Vec<(i64, usize, Period, &str, usize)> = jobs
            .iter()
            .enumerate()
            .flat_map(|(j, job)| {
                job.items.iter().enumerate().map(move |(i, item)| {
                    (
                        store::recording::lock_key(item.org),
                        j,
                        Period::of_instant(item.occurred_at),
                        item.metric.as_str(),
                        i,
                    )
                })
            })
            .collect();
        order.sort();
        let txn: WriteTxn = self
            .db
            .begin_group()
            .await
            .map_err(|e| GroupError::Group(e.into()))?;
        let mut slots: Vec<Vec<Option<RecordOutcome>>> = jobs
            .iter()
            .map(|j| j.items.iter().map(|_| None).collect())
            .collect();
        let mut rest = order.as_slice();
        while let Some(&(key, j, period, metric, _)) = rest.first() {
            let len = rest
                .iter()
                .take_while(|(k, jj, p, m, _)| (*k, *jj, *p, *m) == (key, j, period, metric))
                .count();
            let (run, next) = rest.split_at(len);
            rest = next;
            // A run also keeps to one organization (two could share a lock key).
            let mut start = 0;
            while start < run.len() {
                let org = jobs[j].items[run[start].4].org;
                let end = start
                    + run[start..]
                        .iter()
                        .take_while(|r| jobs[j].items[r.4].org == org)
                        .count();
                let items: Vec<&ParsedRecord> = run[start..end]
                    .iter()
                    .map(|r| &jobs[j].items[r.4])
                    .collect();
                // `Err` drops the transaction: nothing of the group is kept.
                let outcomes = self
                    .record_run(&txn, &jobs[j].viewer, &items, true)
                    .await
                    .map_err(|e| GroupError::Job(j, e))?;
                for (r, outcome) in run[start..end].iter().zip(outcomes) {
                    slots[j][r.4] = Some(outcome);
                }
                start = end;
            }
        }
        let outcomes: Vec<Vec<RecordOutcome>> = slots
            .into_iter()
            .map(|job| job.into_iter().flatten().collect())
            .collect();
        let mut changes: Vec<(OrganizationId, Vec<usage_alert::Model>)> = Vec::new();
        for (job, outcomes) in jobs.iter().zip(&outcomes) {
            for (item, outcome) in job.items.iter().zip(outcomes) {
                if !outcome.changed() {
                    continue;
                }
                match changes.iter_mut().find(|(org, _)| *org == item.org) {
                    Some((_, alerts)) => alerts.extend(outcome.alerts.iter().cloned()),
                    None => changes.push((item.org, outcome.alerts.clone())),
                }
            }
        }
        if changes.is_empty() {
            // Replays and refusals only: nothing to keep, nobody to tell.
            txn.rollback()
                .await
                .map_err(|e| GroupError::Group(e.into()))?;
        } else {
            self.commit_recorded(txn, &changes)
                .await
                .map_err(GroupError::Group)?;
        }
        Ok(outcomes)
    }
}

/// The same error again, for each job of a group that failed as a whole.
fn copy_error(e: &AppError) -> AppError {
    match e {
        AppError::Unauthenticated(m) => AppError::Unauthenticated(m.clone()),
        AppError::Forbidden(m) => AppError::Forbidden(m.clone()),
        AppError::NotFound(m) => AppError::NotFound(m.clone()),
        AppError::BadInput(m) => AppError::BadInput(m.clone()),
        AppError::Conflict(m) => AppError::Conflict(m.clone()),
        AppError::RateLimited(m) => AppError::RateLimited(m.clone()),
        AppError::Internal(cause) => AppError::Internal(anyhow::anyhow!("{cause:#}")),
    }
}

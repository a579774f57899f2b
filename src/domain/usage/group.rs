//! Group commit: concurrent recordings share a transaction. A request queues its recordings (one, or
//! a batch) as one job and waits; a writer takes the first job in the queue and whatever else is
//! queued behind it (up to `MAX_GROUP` recordings), applies them in the global lock order
//! (`store::recording::lock_key`, so two writers never deadlock), commits once, then invalidates the
//! caches, publishes, and answers each job.
//!
//! The group's recordings fall into runs (a job's recordings of one metric of one organization in
//! one period). On Postgres a group of one run applies it with its own statements (`record_run`: the
//! fewest for a single recording). SQLite, where a statement is a hop to the connection's thread and
//! the transaction already holds the database's write lock, reads the views of a wave's runs (as
//! below) in one statement, then writes each run with its own script. On Postgres a group of several
//! takes every organization's lock at once, in the global order, with the group's scope
//! (`store::group::enter`), then applies its runs in waves
//! (`wave`): the k-th run of each organization goes in the k-th wave, so a run reads what the runs
//! before it wrote, and a wave's runs, all of distinct organizations, share its multi-row
//! statements (a few for the whole wave, where each run alone costs three or more).
//!
//! A job is atomic, and one job never touches another: a HARD refusal or a replay writes nothing (it
//! is decided under the organization's lock before any write), and a job that fails (an unknown
//! organization, a key reused for another recording) is answered with its error while the rest of
//! the group is rolled back and applied again without it. A recording is answered only after its
//! commit, so an acknowledged recording survives kill -9.
//!
//! SQLite has one writer (writes are serialized by the engine anyway); Postgres one for each CPU
//! (at most one for every two connections of the pool), each with its own group, so that one
//! group's statements overlap another's. With waves, fewer writers make larger groups: on 2 vCPUs
//! 2 writers carried more than 8 did (BENCHMARKS.md, sixth pass).

use tokio::sync::{Mutex, mpsc, oneshot};

use super::recording::count_recording;
use super::wave::WaveRun;
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

pub(super) enum GroupError {
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
        // The runs: each run of one metric in one period also keeps to one organization (two
        // could share a lock key).
        let mut runs: Vec<WaveRun> = Vec::new();
        for &(_, j, period, metric, i) in &order {
            let item = &jobs[j].items[i];
            let same = runs.last().is_some_and(|run: &WaveRun| {
                let p = run.items[0];
                run.job == j
                    && p.org == item.org
                    && Period::of_instant(p.occurred_at) == period
                    && p.metric.as_str() == metric
            });
            match runs.last_mut() {
                Some(run) if same => {
                    run.items.push(item);
                    run.places.push(i);
                }
                _ => runs.push(WaveRun {
                    job: j,
                    viewer: &jobs[j].viewer,
                    items: vec![item],
                    places: vec![i],
                }),
            }
        }
        let txn: WriteTxn = self
            .db
            .begin_group()
            .await
            .map_err(|e| GroupError::Group(e.into()))?;
        let mut slots: Vec<Vec<Option<RecordOutcome>>> = jobs
            .iter()
            .map(|j| j.items.iter().map(|_| None).collect())
            .collect();
        let mut fill = |run: &WaveRun, outcomes: Vec<RecordOutcome>| {
            for (&i, outcome) in run.places.iter().zip(outcomes) {
                slots[run.job][i] = Some(outcome);
            }
        };
        let postgres = self.db.is_postgres();
        if postgres && runs.len() == 1 {
            // A run alone, with its own statements: the fewest for a single recording.
            // `Err` drops the transaction: nothing of the group is kept.
            for run in &runs {
                let outcomes = self
                    .record_run(&txn, run.viewer, &run.items, true, None)
                    .await
                    .map_err(|e| GroupError::Job(run.job, e))?;
                fill(run, outcomes);
            }
        } else if !postgres {
            // SQLite: the transaction holds the database's write lock. A statement is a hop to the
            // connection's thread, and the multi-row writes of a wave cost more hops than a run's
            // own script (BENCHMARKS.md, sixth pass); the reads are what waves save. So each wave's
            // views are read in one statement, after every write of the waves before it, and each
            // run then writes with its own script, its view already read.
            for wave in waves_of(&runs) {
                let asks = wave
                    .iter()
                    .map(|run| run.ask())
                    .collect::<AppResult<Vec<_>>>()
                    .map_err(GroupError::Group)?;
                let views = store::recording::views(&*txn, &asks)
                    .await
                    .map_err(|e| GroupError::Group(e.into()))?;
                // One view for each ask, in order; a run that cannot use it reads its own.
                for (run, ahead) in wave.into_iter().zip(views) {
                    let outcomes = self
                        .record_run(&txn, run.viewer, &run.items, true, ahead)
                        .await
                        .map_err(|e| GroupError::Job(run.job, e))?;
                    fill(run, outcomes);
                }
            }
        } else {
            // Every organization's lock at once, in the global order, with the group's scope;
            // then waves: the k-th run of each organization goes in the k-th wave, so a run reads
            // what the runs before it in the group wrote.
            let mut orgs: Vec<OrganizationId> = runs.iter().map(|r| r.items[0].org).collect();
            orgs.sort_unstable_by_key(|o| (store::recording::lock_key(*o), o.0));
            orgs.dedup();
            store::group::enter(&txn, &orgs, true)
                .await
                .map_err(|e| GroupError::Group(e.into()))?;
            let mut rescoped = false;
            for wave in waves_of(&runs) {
                if rescoped {
                    store::group::enter(&txn, &orgs, false)
                        .await
                        .map_err(|e| GroupError::Group(e.into()))?;
                }
                let done = self.record_wave(&txn, &wave).await?;
                rescoped = done.rescoped;
                for (run, outcomes) in wave.into_iter().zip(done.outcomes) {
                    fill(run, outcomes);
                }
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

/// A group's runs in waves: the k-th run of each organization goes in the k-th wave, so a wave's runs
/// are of distinct organizations, and each run comes after its organization's runs before it.
fn waves_of<'r, 'a>(runs: &'r [WaveRun<'a>]) -> Vec<Vec<&'r WaveRun<'a>>> {
    let mut waves: Vec<Vec<&WaveRun>> = Vec::new();
    let mut seen: HashMap<OrganizationId, usize> = HashMap::new();
    for run in runs {
        let k = seen.entry(run.items[0].org).or_insert(0);
        if *k == waves.len() {
            waves.push(Vec::new());
        }
        waves[*k].push(run);
        *k += 1;
    }
    waves
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

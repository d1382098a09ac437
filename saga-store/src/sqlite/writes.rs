//! One writer at a time in a process, and the writes of many sagas in one transaction.
//!
//! SQLite lets one connection write at a time. Connections of one pool that all ask for the
//! write lock at once fight over it with busy waits (sleeps that grow, up to tens of
//! milliseconds), so a process hands its writes through a *gate* first: a fair queue in which
//! only the gate's holder asks the file for the lock. Other processes on the same file still
//! meet the busy timeout, as before.
//!
//! Step writes ([`Store::apply`](saga_core::Store::apply)) and creations go one step further:
//! a caller queues its job, then waits for the gate; whoever holds it writes every job then
//! waiting in one transaction with one commit (one flush of the log for all of them), the step
//! writes' events in one statement. Should one of them be refused (a lost lease, a cancel
//! request) or fail, nothing of the group is kept and each job goes alone, so that each gets its
//! own outcome: refusals are rare, and a group without a savepoint per job takes half the
//! statements. A lone job goes out at once, from the first caller to reach the gate.

use std::sync::Arc;

use saga_core::store::write::{CreationPlan, WritePlan};
use saga_core::{Created, Error, Lease, NewSaga, Result, Timestamp};
use sqlx::sqlite::SqlitePool;
use sqlx::{Sqlite, Transaction};
use tokio::sync::{mpsc, oneshot, OwnedMutexGuard};

use crate::error::classify;

/// Most jobs in one transaction: a longer queue is written in several, one after another, so
/// that the first ones are answered without waiting for all.
const MAX_GROUP: usize = 128;

/// The turn to write in this process: held from before `BEGIN IMMEDIATE` to the commit.
pub(super) type Gate = OwnedMutexGuard<()>;

/// The gate, and the writer task's queue.
#[derive(Debug)]
pub(super) struct Writes {
    gate: Arc<tokio::sync::Mutex<()>>,
    /// The writer task's queue (`None`: every job goes alone, in its caller's task).
    queue: Option<mpsc::UnboundedSender<Queued>>,
    pool: SqlitePool,
}

/// A job waiting for the gate, with its caller's span (so that the transaction's time shows up
/// in its saga's trace).
#[derive(Debug)]
struct Queued {
    job: Job,
    span: tracing::Span,
}

/// A step write or a creation, with where to send its outcome.
#[derive(Debug)]
enum Job {
    /// `Ok(true)`: written; `Ok(false)`: the fence or a step phase refused it (nothing
    /// written).
    Write {
        write: Box<(Lease, WritePlan)>,
        done: oneshot::Sender<Result<bool>>,
    },
    /// Boxed: thousands of waiting jobs can be held at once, each sized to the larger variant.
    Create {
        creation: Box<(NewSaga, CreationPlan)>,
        done: oneshot::Sender<Result<Created>>,
    },
}

/// How writing a group together ended.
enum Together {
    /// Committed: every step write is written, and the creations' outcomes, in the group's
    /// order.
    Committed(Vec<Result<Created>>),
    /// Nothing was written (a refusal, a failed statement, no transaction): each job can go
    /// alone and get its own outcome.
    NotWritten,
    /// The commit failed: it may have been made, so no job is written again; each caller
    /// reads the saga back before writing again, as after any lost answer.
    CommitFailed(String),
}

impl Writes {
    /// Starts the writer task on the current runtime, when there is one (else every job goes
    /// alone). It stops when the last handle is dropped.
    pub(super) fn start(pool: SqlitePool) -> Self {
        let gate = Arc::new(tokio::sync::Mutex::new(()));
        let queue = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let (queue, mut receiver) = mpsc::unbounded_channel::<Queued>();
            let (gate, pool) = (Arc::clone(&gate), pool.clone());
            runtime.spawn(async move {
                while let Some(first) = receiver.recv().await {
                    // Whatever arrives while the gate is held elsewhere goes along.
                    let turn = Arc::clone(&gate).lock_owned().await;
                    let mut group = vec![first];
                    while group.len() < MAX_GROUP {
                        match receiver.try_recv() {
                            Ok(next) => group.push(next),
                            Err(_) => break,
                        }
                    }
                    write_group(&pool, group).await;
                    drop(turn);
                }
            });
            queue
        });
        Self { gate, queue, pool }
    }

    /// Waits for this process's turn to write (callers are served in the order they came).
    pub(super) async fn gate(&self) -> Gate {
        Arc::clone(&self.gate).lock_owned().await
    }

    /// Writes `plan` fenced by `lease`, in one transaction with the other jobs waiting at the
    /// same time. `Ok(false)`: the fence did not hold or a step phase refused the plan
    /// (nothing of it was written).
    pub(super) async fn write(&self, lease: &Lease, plan: WritePlan) -> Result<bool> {
        let (done, outcome) = oneshot::channel();
        let job = Job::Write {
            write: Box::new((lease.clone(), plan)),
            done,
        };
        self.run(job, outcome).await?
    }

    /// Creates a saga (its plan compiled), in one transaction with the other jobs waiting at
    /// the same time.
    pub(super) async fn create(&self, saga: NewSaga, plan: CreationPlan) -> Result<Created> {
        let (done, outcome) = oneshot::channel();
        let job = Job::Create {
            creation: Box::new((saga, plan)),
            done,
        };
        self.run(job, outcome).await?
    }

    /// Hands `job` to the writer task (or, with none running, writes it here, holding the
    /// gate), then waits for its outcome.
    async fn run<T>(&self, job: Job, outcome: oneshot::Receiver<T>) -> Result<T> {
        let queued = Queued {
            job,
            span: tracing::Span::current(),
        };
        let unsent = match &self.queue {
            Some(queue) => queue.send(queued).err().map(|unsent| unsent.0),
            None => Some(queued),
        };
        if let Some(queued) = unsent {
            // No writer task (its runtime is gone): written here, in a task of its own so that
            // a caller dropped meanwhile does not cut the transaction short.
            let (pool, gate) = (self.pool.clone(), self.gate().await);
            tokio::spawn(async move {
                let _span =
                    tracing::info_span!(parent: &queued.span, "store_write", sagas = 1_usize);
                alone(&pool, queued.job, saga_core::now()).await;
                drop(gate);
            });
        }
        // A writer that took the job and stopped before answering may have committed it:
        // report it as unavailable, so that the caller reads the saga back before writing again.
        outcome.await.map_err(|_| {
            Error::StoreUnavailable(
                "the store's writer stopped before answering; the write may have been made".into(),
            )
        })
    }
}

/// Writes `group` in one transaction and answers each job; if nothing of it was written (a
/// refusal, a failed statement), writes each job alone.
async fn write_group(pool: &SqlitePool, group: Vec<Queued>) {
    let sagas = group.len();
    if sagas > 1 {
        let spans: Vec<tracing::Span> = group
            .iter()
            .map(|queued| tracing::info_span!(parent: &queued.span, "store_write", sagas))
            .collect();
        let written = together(pool, &group, saga_core::now()).await;
        drop(spans);
        match written {
            Together::Committed(created) => {
                let mut created = created.into_iter();
                for queued in group {
                    match queued.job {
                        Job::Write { done, .. } => {
                            let _ = done.send(Ok(true));
                        }
                        Job::Create { done, .. } => {
                            // One outcome per creation, in order (`together`).
                            let _ = done.send(created.next().unwrap_or_else(|| {
                                Err(Error::StoreUnavailable(
                                    "the store lost a creation's answer; look the saga up by its start key before starting it again".into(),
                                ))
                            }));
                        }
                    }
                }
                return;
            }
            Together::CommitFailed(err) => {
                let unknown = || {
                    Error::StoreUnavailable(
                        format!(
                            "the commit of a group of writes failed and may have been made: {err}"
                        )
                        .into(),
                    )
                };
                for queued in group {
                    match queued.job {
                        Job::Write { done, .. } => {
                            let _ = done.send(Err(unknown()));
                        }
                        Job::Create { done, .. } => {
                            let _ = done.send(Err(unknown()));
                        }
                    }
                }
                return;
            }
            Together::NotWritten => {}
        }
    }
    for queued in group {
        let _span = tracing::info_span!(parent: &queued.span, "store_write", sagas = 1_usize);
        alone(pool, queued.job, saga_core::now()).await;
    }
}

/// Writes all of `group` in one transaction, the step writes' events in one statement.
async fn together(pool: &SqlitePool, group: &[Queued], now: Timestamp) -> Together {
    match written_together(pool, group, now).await {
        Ok(Some((tx, created))) => match tx.commit().await {
            Ok(()) => Together::Committed(created),
            Err(err) => Together::CommitFailed(err.to_string()),
        },
        // Not committed: the transaction, if any, is rolled back as it is dropped.
        Ok(None) | Err(_) => Together::NotWritten,
    }
}

/// The transaction with all of `group` written, not committed, and the creations' outcomes.
/// `Ok(None)`: a step write was refused or a creation failed, and nothing was written.
async fn written_together(
    pool: &SqlitePool,
    group: &[Queued],
    now: Timestamp,
) -> Result<Option<(Transaction<'static, Sqlite>, Vec<Result<Created>>)>> {
    let mut tx = begin(pool).await?;
    // Creations first (a write never concerns a saga created in its group: its creator is
    // answered first): those with a start key one by one, the others all at once.
    let mut created = Vec::new();
    let mut keyless = Vec::new();
    for queued in group {
        let Job::Create { creation, .. } = &queued.job else {
            continue;
        };
        let (saga, plan) = &**creation;
        if saga.idempotency_key.is_none() {
            keyless.push((saga, plan));
            created.push(Ok(Created::New(saga.id)));
            continue;
        }
        match super::create_rows(&mut tx, saga, plan, now).await {
            // A key taken already (with this input or another) writes nothing.
            outcome @ (Ok(_) | Err(Error::Conflict { .. })) => created.push(outcome),
            Err(_) => {
                tx.rollback().await.map_err(classify)?;
                return Ok(None);
            }
        }
    }
    // A saga id stored already fails the statement: each creation then goes alone and is
    // told which.
    if !keyless.is_empty()
        && !super::many::create_rows(&mut tx, &keyless, now)
            .await
            .unwrap_or(false)
    {
        tx.rollback().await.map_err(classify)?;
        return Ok(None);
    }
    let writes: Vec<(&Lease, &WritePlan)> = group
        .iter()
        .filter_map(|queued| match &queued.job {
            Job::Write { write, .. } => Some((&write.0, &write.1)),
            Job::Create { .. } => None,
        })
        .collect();
    let written = if writes.len() > 1 && distinct(&writes) {
        super::many::write_rows(&mut tx, &writes, now).await?
    } else {
        let mut written = true;
        for (lease, plan) in &writes {
            if !super::write_rows(&mut tx, lease.saga, Some(lease), plan, now).await? {
                written = false;
                break;
            }
        }
        written
    };
    if !written {
        tx.rollback().await.map_err(classify)?;
        return Ok(None);
    }
    // The events of all, in one statement: those of each saga in its order.
    let mut created_now = created.iter();
    let events: Vec<_> = group
        .iter()
        .flat_map(|queued| match &queued.job {
            Job::Write { write, .. } => {
                let (lease, plan) = &**write;
                let saga = lease.saga;
                plan.events.iter().map(move |event| (saga, event)).collect()
            }
            Job::Create { creation, .. } => match created_now.next() {
                Some(Ok(Created::New(_))) => {
                    let (saga, plan) = &**creation;
                    plan.events.iter().map(|event| (saga.id, event)).collect()
                }
                _ => Vec::new(),
            },
        })
        .collect();
    super::insert_events(&mut tx, &events, now).await?;
    Ok(Some((tx, created)))
}

/// Whether `writes` concern distinct sagas and each writes a step phase at most once, as
/// [`many::write_rows`](super::many::write_rows) needs (else they are written one by one).
fn distinct(writes: &[(&Lease, &WritePlan)]) -> bool {
    let mut sagas = std::collections::HashSet::with_capacity(writes.len());
    writes.iter().all(|(lease, plan)| {
        let mut phases = std::collections::HashSet::with_capacity(plan.steps.len());
        sagas.insert(lease.saga)
            && plan
                .steps
                .iter()
                .all(|step| phases.insert((step.index, step.phase)))
    })
}

/// Writes one job in a transaction of its own, and answers it.
async fn alone(pool: &SqlitePool, job: Job, now: Timestamp) {
    match job {
        Job::Write { write, done } => {
            let (lease, plan) = *write;
            let written = async {
                let mut tx = begin(pool).await?;
                if super::write_plan(&mut tx, lease.saga, Some(&lease), &plan, now).await? {
                    tx.commit().await.map_err(classify)?;
                    Ok(true)
                } else {
                    tx.rollback().await.map_err(classify)?;
                    Ok(false)
                }
            }
            .await;
            let _ = done.send(written);
        }
        Job::Create { creation, done } => {
            let (saga, plan) = &*creation;
            let created = async {
                let mut tx = begin(pool).await?;
                let created = super::create_in(&mut tx, saga, plan, now).await?;
                match created {
                    Created::New(_) => tx.commit().await.map_err(classify)?,
                    Created::Existing(_) => tx.rollback().await.map_err(classify)?,
                }
                Ok(created)
            }
            .await;
            let _ = done.send(created);
        }
    }
}

async fn begin(pool: &SqlitePool) -> Result<Transaction<'static, Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE").await.map_err(classify)
}

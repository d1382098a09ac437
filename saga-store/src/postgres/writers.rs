//! The writer tasks: they gather the writes and creations of many sagas waiting at the same
//! time and send them in one statement ([`statement`](super::statement)) — one round trip and
//! one commit for all of them, the way a database groups commits — so the cost per step falls
//! as load rises, while a lone write goes out at once, from its caller's task.
//!
//! The gathering rule: a writer takes whatever waits, up to [`MAX_BATCH`]; a second writer
//! starts a statement beside one in flight only once [`OVERLAP_AT`] jobs wait, or after
//! [`OVERLAP_AFTER`]. A statement that fails for its content is written again job by job, so
//! only the offending write fails.
//!
//! Each queued job carries its caller's tracing span: the statement that writes it shows up in
//! that saga's trace as a `store_write` span (field `sagas`: how many writes the statement
//! carried).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use saga_core::store::write::CreationPlan;
use saga_core::store::NewSaga;
use saga_core::{Error, Result};
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

use super::statement::{self, Write};
use crate::error::is_lock_timeout;

/// Most sagas written in one statement.
pub(super) const MAX_BATCH: usize = 64;

/// How many jobs a writer gathers before its statement may overlap another one in flight.
/// Below it, the writer waits for that statement to end and takes whatever arrived meanwhile:
/// one statement at a time costs the server and the process less per job than two half-full
/// ones, while a queue this long means that one statement at a time no longer keeps up.
const OVERLAP_AT: usize = MAX_BATCH / 4;

/// How long a writer waits for the statement in flight before it starts its own beside it
/// anyway, however few jobs it holds: a statement held up (by a row lock, a slow flush) holds
/// back the writes behind it for no longer. With 16 sagas in flight a statement and its commit
/// take about 1.5 ms; 3 ms did better than 20 ms on the workload with compensations and the
/// same on the one without.
const OVERLAP_AFTER: Duration = Duration::from_millis(3);

/// What waits for a writer: a fenced write, or a saga to create (boxed: thousands of waiting
/// writes can be held at once, each sized to the larger variant).
enum Job {
    Write(Box<Write>),
    Create(Box<(NewSaga, CreationPlan)>),
}

/// A job waiting for a writer, with where to send its outcome (fence held; saga created).
struct Queued {
    job: Job,
    done: oneshot::Sender<Result<bool>>,
    /// The caller's span, so that the statement's time shows up in its saga's trace.
    span: tracing::Span,
}

/// The writer tasks and their queue. Writers stop when the last handle is dropped.
#[derive(Debug)]
pub(super) struct Writers {
    queue: Option<mpsc::UnboundedSender<Queued>>,
    /// Statements being written right now, by writers or directly by their callers.
    busy: Arc<InFlight>,
    pool: PgPool,
    channel: String,
}

/// The statements being written right now (a writer's counts from its first job on), and a
/// signal each time one ends.
#[derive(Debug, Default)]
struct InFlight {
    count: AtomicUsize,
    ended: Notify,
}

/// One statement being written (by a writer, or directly by its caller); dropped when done.
pub(super) struct Busy(Arc<InFlight>);

impl Busy {
    /// Counts one more statement in flight.
    fn start(in_flight: &Arc<InFlight>) -> Self {
        in_flight.count.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(in_flight))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        // Count first, then signal: a writer woken by the signal sees the count without it.
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_one();
    }
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, saga) = match &self.job {
            Job::Write(write) => ("write", write.saga),
            Job::Create(creation) => ("create", creation.0.id),
        };
        f.debug_struct("Queued")
            .field("kind", &kind)
            .field("saga", &saga)
            .finish()
    }
}

impl Writers {
    /// Starts `count` writer tasks on the current runtime (none: every write goes alone).
    pub(super) fn start(pool: PgPool, channel: String, count: usize) -> Self {
        let busy = Arc::new(InFlight::default());
        if count == 0 {
            return Self {
                queue: None,
                busy,
                pool,
                channel,
            };
        }
        let (queue, receiver) = mpsc::unbounded_channel::<Queued>();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..count {
            let receiver = Arc::clone(&receiver);
            let busy = Arc::clone(&busy);
            let pool = pool.clone();
            let channel = channel.clone();
            tokio::spawn(async move {
                loop {
                    let mut group = Vec::new();
                    let done = {
                        let mut receiver = receiver.lock().await;
                        match receiver.recv().await {
                            Some(first) => group.push(first),
                            None => return,
                        }
                        // From its first job on, this writer's statement counts as in flight:
                        // callers queue behind it rather than write past it.
                        let done = Busy::start(&busy);
                        gather(&mut receiver, &busy, &mut group).await;
                        done
                    };
                    write_group(&pool, &channel, group).await;
                    drop(done);
                }
            });
        }
        Self {
            queue: Some(queue),
            busy,
            pool,
            channel,
        }
    }

    /// When no statement is being written at all, a caller writes its own: no hand-over to a
    /// writer task, the lowest latency when load is light. Otherwise writes queue for the
    /// writers, which group them.
    fn direct_turn(&self) -> Option<Busy> {
        self.busy
            .count
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Busy(Arc::clone(&self.busy)))
    }

    /// Writes one saga's changes: alone when nothing else is being written or no writers are
    /// configured, else with whatever else is waiting. `Ok(false)`: the fence did not hold
    /// (nothing was written).
    pub(super) async fn write(&self, write: Write) -> Result<bool> {
        self.run(Job::Write(Box::new(write))).await
    }

    /// Creates a saga (its plan compiled): alone when nothing else is being written or no
    /// writers are configured, else with whatever else is waiting. `Ok(false)`: its start key
    /// exists already (nothing was written).
    pub(super) async fn create(&self, saga: NewSaga, plan: CreationPlan) -> Result<bool> {
        self.run(Job::Create(Box::new((saga, plan)))).await
    }

    async fn run(&self, job: Job) -> Result<bool> {
        // Only the wait for a writer stays in the caller's future (it is held for every saga
        // in flight); a job written here is boxed with what it needs.
        let outcome = match self.submit(job) {
            Ok(outcome) => outcome,
            Err((job, busy)) => {
                return Box::pin(async move {
                    let _busy = busy;
                    let _span = tracing::info_span!("store_write", sagas = 1_usize);
                    alone(&self.pool, &job, &self.channel).await
                })
                .await
            }
        };
        // A writer that took the job and stopped before answering may have committed it:
        // report it as unavailable, so that the caller reads the saga back before writing again.
        outcome.await.unwrap_or_else(|_| {
            Err(Error::StoreUnavailable(
                "the store's writer stopped before answering; the write may have been made".into(),
            ))
        })
    }

    /// Hands `job` to the writers; gives it back (with the turn it holds, if any) when its
    /// caller is to write it: nothing else is being written, no writers are configured, or
    /// they are gone (their runtime shut down).
    fn submit(
        &self,
        job: Job,
    ) -> std::result::Result<oneshot::Receiver<Result<bool>>, (Job, Option<Busy>)> {
        let queue = match (&self.queue, self.direct_turn()) {
            (Some(queue), None) => queue,
            (_, busy) => return Err((job, busy)),
        };
        let (done, outcome) = oneshot::channel();
        let span = tracing::Span::current();
        match queue.send(Queued { job, done, span }) {
            Ok(()) => Ok(outcome),
            Err(unsent) => Err((unsent.0.job, None)),
        }
    }
}

/// Adds to `group` (which holds the first job) what waits in the queue, up to [`MAX_BATCH`].
/// While another statement is in flight (besides this writer's own) and fewer than
/// [`OVERLAP_AT`] jobs are gathered, waits for that statement to end, at most
/// [`OVERLAP_AFTER`], taking jobs as they arrive.
async fn gather(
    receiver: &mut mpsc::UnboundedReceiver<Queued>,
    busy: &InFlight,
    group: &mut Vec<Queued>,
) {
    // Set up only if this writer has to wait.
    let mut limit = None;
    loop {
        while group.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        if group.len() >= OVERLAP_AT || busy.count.load(Ordering::Acquire) <= 1 {
            return;
        }
        // The count is checked again after every wake-up, so a signal spent elsewhere, or one
        // left over from an earlier statement, costs a turn of the loop, never a stall: a
        // statement that ends after the check above leaves a signal for `notified`.
        let limit = limit.get_or_insert_with(|| Box::pin(tokio::time::sleep(OVERLAP_AFTER)));
        tokio::select! {
            () = busy.ended.notified() => {}
            () = limit.as_mut() => return,
            next = receiver.recv() => match next {
                Some(next) => group.push(next),
                None => return,
            },
        }
    }
}

/// Runs one job in a statement of its own.
async fn alone(pool: &PgPool, job: &Job, channel: &str) -> Result<bool> {
    let now = saga_core::now();
    match job {
        Job::Write(write) => statement::execute_one(pool, write, now, channel).await,
        Job::Create(creation) => {
            let (saga, plan) = &**creation;
            statement::create(pool, saga, plan, now, channel).await
        }
    }
}

/// Writes a group: in one statement, except creations of a saga id repeated in it.
async fn write_group(pool: &PgPool, channel: &str, group: Vec<Queued>) {
    // A saga id created twice in one statement would be inserted once and answered twice as
    // new: a repeated id waits for the statement, then goes alone and is told it exists.
    let mut ids = HashSet::new();
    let (group, repeated): (Vec<Queued>, Vec<Queued>) =
        group.into_iter().partition(|queued| match &queued.job {
            Job::Create(creation) => ids.insert(creation.0.id),
            Job::Write(_) => true,
        });
    write_statement(pool, channel, group).await;
    for queued in repeated {
        let outcome = alone_traced(pool, &queued, channel, 1).await;
        let _ = queued.done.send(outcome);
    }
}

/// Runs one queued job alone, inside a `store_write` span of its caller's.
async fn alone_traced(pool: &PgPool, queued: &Queued, channel: &str, sagas: usize) -> Result<bool> {
    let _span = write_span(queued, sagas);
    alone(pool, &queued.job, channel).await
}

/// The span of a statement that writes `queued` along with others (`sagas` in all), in the
/// trace of the job's caller. Not entered: it measures the statement's time, from now until
/// it is dropped.
fn write_span(queued: &Queued, sagas: usize) -> tracing::Span {
    tracing::info_span!(parent: &queued.span, "store_write", sagas)
}

/// Writes a group (no saga created twice) in one statement; if the statement fails for its
/// content, runs each job alone so that only the offending one fails.
async fn write_statement(pool: &PgPool, channel: &str, group: Vec<Queued>) {
    let mut writes: Vec<&Write> = Vec::new();
    let mut creations: Vec<(&NewSaga, &CreationPlan)> = Vec::new();
    for queued in &group {
        match &queued.job {
            Job::Write(write) => writes.push(&**write),
            Job::Create(creation) => creations.push((&creation.0, &creation.1)),
        }
    }
    let spans: Vec<tracing::Span> = group
        .iter()
        .map(|queued| write_span(queued, group.len()))
        .collect();
    let now = saga_core::now();
    let written = statement::execute(pool, &writes, &creations, now, channel).await;
    drop(spans);
    match written {
        Ok(outcome) => {
            let mut fenced = outcome.fenced.into_iter();
            let mut created = outcome.created.into_iter();
            for queued in group {
                let done = match queued.job {
                    Job::Write(_) => fenced.next(),
                    Job::Create(_) => created.next(),
                };
                let _ = queued.done.send(Ok(done.unwrap_or(false)));
            }
        }
        Err(err) if group.len() == 1 => {
            if let Some(queued) = group.into_iter().next() {
                let _ = queued.done.send(Err(err));
            }
        }
        // A saga row held locked by someone else: nothing committed. Each write goes alone,
        // so that only the locked saga's write waits (and fails) again.
        Err(err) if is_lock_timeout(&err) => {
            for queued in group {
                let outcome = alone_traced(pool, &queued, channel, 1).await;
                let _ = queued.done.send(outcome);
            }
        }
        Err(Error::StoreUnavailable(err)) => {
            // The statement may have committed with only its answer lost: each caller decides
            // (the worker reads the saga back before writing again).
            let text = err.to_string();
            for queued in group {
                let _ = queued
                    .done
                    .send(Err(Error::StoreUnavailable(text.clone().into())));
            }
        }
        Err(_) => {
            for queued in group {
                let outcome = alone_traced(pool, &queued, channel, 1).await;
                let _ = queued.done.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use saga_core::store::write::WritePlan;
    use saga_core::SagaId;

    /// A queued write of a fresh saga (its outcome is not read).
    fn job() -> Queued {
        let (done, _) = oneshot::channel();
        Queued {
            job: Job::Write(Box::new(Write {
                saga: SagaId::new(),
                lease: None,
                plan: WritePlan::default(),
            })),
            done,
            span: tracing::Span::none(),
        }
    }

    /// Another statement in flight, and this writer's own.
    fn two_in_flight() -> (Arc<InFlight>, Busy, Busy) {
        let in_flight = Arc::new(InFlight::default());
        let other = Busy::start(&in_flight);
        let own = Busy::start(&in_flight);
        (in_flight, other, own)
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_waits_for_the_statement_in_flight_and_takes_what_arrives_meanwhile() {
        let (in_flight, other, _own) = two_in_flight();
        let (queue, mut receiver) = mpsc::unbounded_channel();
        let mut group = vec![job()];
        queue.send(job()).ok();
        {
            let gathering = gather(&mut receiver, &in_flight, &mut group);
            tokio::pin!(gathering);
            let waited = tokio::time::timeout(OVERLAP_AFTER / 2, &mut gathering).await;
            assert!(waited.is_err(), "two jobs wait for the statement in flight");
            queue.send(job()).ok();
            drop(other);
            gathering.await;
        }
        assert_eq!(
            group.len(),
            3,
            "the job that arrived meanwhile goes in the same statement"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_starts_beside_the_statement_in_flight_once_enough_jobs_wait() {
        let (in_flight, _other, _own) = two_in_flight();
        let (queue, mut receiver) = mpsc::unbounded_channel();
        let mut group = vec![job()];
        for _ in 1..OVERLAP_AT {
            queue.send(job()).ok();
        }
        let gathered = tokio::time::timeout(
            OVERLAP_AFTER / 2,
            gather(&mut receiver, &in_flight, &mut group),
        )
        .await;
        assert!(gathered.is_ok(), "{OVERLAP_AT} jobs do not wait");
        assert_eq!(group.len(), OVERLAP_AT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_starts_beside_a_statement_held_up_after_the_time_limit() {
        let (in_flight, _other, _own) = two_in_flight();
        let (_queue, mut receiver) = mpsc::unbounded_channel();
        let mut group = vec![job()];
        let started = tokio::time::Instant::now();
        gather(&mut receiver, &in_flight, &mut group).await;
        assert!(started.elapsed() >= OVERLAP_AFTER, "waited for the limit");
        assert_eq!(group.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_writer_alone_in_flight_does_not_wait() {
        let in_flight = Arc::new(InFlight::default());
        let _own = Busy::start(&in_flight);
        let (queue, mut receiver) = mpsc::unbounded_channel();
        let mut group = vec![job()];
        queue.send(job()).ok();
        let started = tokio::time::Instant::now();
        gather(&mut receiver, &in_flight, &mut group).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert_eq!(group.len(), 2, "what waits in the queue goes along");
    }
}
